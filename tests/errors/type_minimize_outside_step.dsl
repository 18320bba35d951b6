fn loss(x: f32[N, 10]) {
    minimize mean(x)
}
