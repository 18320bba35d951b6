fn pick(x: f32[N, 10]) {
    return x[None, 0, ..., 1, 2]
}
