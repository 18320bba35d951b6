model Net(x: f32[N, 784]) -> logits {
    hidden = dense(x, 128) |> relu
    logit = dense(hidden, 10)
}
