fn combine(a: f32[N, 64], b: f32[N, 32]) {
    return a + b
}
