fn project(a: f32[N, 64], w: f32[32, 10]) {
    return a @ w
}
