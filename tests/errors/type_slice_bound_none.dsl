fn head(x: f32[N, 10]) {
    return x[None:3]
}
