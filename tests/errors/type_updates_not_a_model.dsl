model Net(x: f32[N, 784]) -> y {
    y = dense(x, 10)
}
fn loss_of(y, labels) {
    return sparse_categorical_crossentropy(y, labels, from_logits=true)
}
step train(x: f32[N, 784], labels: i64[N]) updates loss_of using adam(lr=0.001) {
    minimize loss_of(Net(x), labels)
}
