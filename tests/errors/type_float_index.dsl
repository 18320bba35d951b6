fn pick(x: f32[N, 10]) {
    return x[:, 1.5]
}
