model M(x: f32[N, 3]) -> y {
    y = dense(x, 2)
}
step train(x: f32[N, 3], t: f32[N, 2]) updates M using sgd(lr=linear_decay(0.1, 100)) {
    minimize mse(M(x), t)
}
