fn strided(x: f32[N, 10]) {
    return x[::N]
}
