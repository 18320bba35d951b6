model Net(x: f32[N, 1, 28, 28]) -> y {
    y = conv3d(x, 8, kernel=3)
}
