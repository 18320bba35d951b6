fn total(x: f32[N, 3, 4]) {
    return sum(x, axis=[1, -2])
}
