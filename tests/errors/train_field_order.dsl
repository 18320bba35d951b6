model Net(x: f32[N, 784]) -> logits {
    logits = dense(x, 10)
}
step train_net(image: f32[N, 784], label: i64[N]) updates Net using adam(lr=0.01) {
    minimize sparse_categorical_crossentropy(Net(image), label, from_logits=true)
}
train t {
    data  = mnist
    flat  = pixels |> flatten
    pixels = image |> scale(0, 1)
    steps = [train_net(flat, label)]
}
