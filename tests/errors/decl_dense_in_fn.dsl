fn head(x: f32[N, 64]) {
    return dense(x, 10)
}
