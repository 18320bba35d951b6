model Up(x: f32[N, 8, 7, 7]) -> y {
    y = conv2d_transpose(x, 4, kernel=3, strides=2, padding=1, output_padding=2)
}
