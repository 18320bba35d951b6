model ConvNet(image: f32[N, 1, 28, 28]) -> logits {
    conv1  = conv2d(image, 32, kernel=3, padding=same) |> relu
    pool1  = max_pol2d(conv1, 2)
    logits = dense(flatten(pool1), 10)
}
