fn join(a: f32[N, 4], b: f32[N, 4]) {
    return [a, b] * 2
}
