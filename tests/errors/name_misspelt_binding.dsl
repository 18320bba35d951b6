model Classifier(x: f32[N, 784]) -> logits {
    hidden = dense(x, 128) |> relu
    logits = dense(hiden, 10)
}
