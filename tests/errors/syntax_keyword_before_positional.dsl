model Net(image: f32[N, 1, 28, 28]) -> y {
    y = conv2d(image, kernel=3, 32)
}
