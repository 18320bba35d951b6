fn head(x: f32[N, 10]) {
    return x[:, 0:2.5]
}
