model Net(x: f32[N, 784]) -> y {
    y = dense(x, 10)
}
step train(x: f32[N, 784]) updates Net using sgd(lr=0.1) {
    minimize Net(x) ^ 2
}
