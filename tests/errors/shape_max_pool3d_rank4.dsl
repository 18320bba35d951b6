model Net(x: f32[N, 1, 28, 28]) -> y {
    y = max_pool3d(x, 2)
}
