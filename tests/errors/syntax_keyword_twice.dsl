model Net(image: f32[N, 1, 28, 28]) -> y {
    y = conv2d(image, 32, kernel=3, kernel=5)
}
