fn pick(x: f32[N, 10]) {
    return x[0, 1, 2]
}
