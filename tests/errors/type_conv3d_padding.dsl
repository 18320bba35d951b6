model Net(x: f32[N, 1, 8, 8, 8]) -> y {
    y = conv3d(x, 8, kernel=3, padding=[1, 1])
}
