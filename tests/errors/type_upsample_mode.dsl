model Net(x: f32[N, 3, 8, 8]) -> y {
    y = upsample2d(x, 2, mode=linear)
}
