fn f(x: f32[N, 10]) {
    scale = 2.0
    return scale(x)
}
