model Net(x: f32[N, 784]) -> y {
    y = dense(x, 10)
}
step train(x: f32[N, 784]) updates using adam(lr=0.001) {
    minimize mean(Net(x) ^ 2)
}
