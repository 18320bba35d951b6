fn normalize(x: f32[N, 10]) {
    return x / sum(x, axis=1, keepdims=true)
    y = x * 2
}
