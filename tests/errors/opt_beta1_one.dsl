model M(x: f32[N, 3]) -> y {
    y = dense(x, 2)
}
step train(x: f32[N, 3], t: f32[N, 2]) updates M using adam(lr=0.001, beta1=1.0) {
    minimize mse(M(x), t)
}
