model M(x: f32[N, 3]) -> y {
    y = dense(x, 2)
}
step train(x: f32[N, 3], step: i64) updates M using sgd() {
    minimize mean(M(x))
}
