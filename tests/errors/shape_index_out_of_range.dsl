fn first(x: f32[N, 10]) {
    return x[:, 10]
}
