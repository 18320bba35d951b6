model ConvNet(image: f32[N, 1, 28, 28]) -> logits {
    conv1  = conv2d(image, 64, kernel=3, padding=same) |> relu
    pool1  = max_pool2d(conv1, 4)
    logits = dense(pool1, 10)
}
