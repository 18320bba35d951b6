model ConvNet(x: f32[N, 784]) -> y {
    y = conv2d(x, 32, kernel=3)
}
