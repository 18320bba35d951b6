model ConvNet(image: f32[N, 1, 28, 28]) -> y {
    y = conv2d(image, 32, kernal=3)
}
