model M(x: f32[N, 3]) -> y {
    y = dense(x, 2)
}
step train(x: f32[N, 3], t: f32[N, 2]) updates M using adam(lr=exponential_decay(0.01, decay_steps=1000)) {
    minimize mse(M(x), t)
}
