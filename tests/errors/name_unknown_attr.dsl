model ConvNet(image: f32[N, 1, 28, 28]) -> logits {
    conv1  = conv2d(image, 8, kernel=3) |> relu
    logits = dense(flatten(conv1), 10)
}
fn probe(image: f32[1, 1, 28, 28]) {
    return mean(ConvNet(image).conv)
}
