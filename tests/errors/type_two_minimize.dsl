model Net(x: f32[N, 784]) -> y {
    y = dense(x, 10)
}
step train(x: f32[N, 784], labels: i64[N]) updates Net using adam(lr=0.001) {
    minimize sparse_categorical_crossentropy(Net(x), labels, from_logits=true)
    minimize mean(Net(x) ^ 2)
}
