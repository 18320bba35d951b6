model M(x: f32[N, 3]) -> y {
    y = dense(x, 2)
}
step train(x: f32[N, 3], t: f32[N, 2]) updates M using sgd() {
    p = M(x)
    minimize mse(p, t)
    metric error = abs(p - t)
}
