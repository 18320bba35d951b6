model Up(x: f32[N, 8, 1, 7]) -> y {
    y = conv2d_transpose(x, 4, kernel=2, strides=2, padding=[1, 0, 1, 0])
}
