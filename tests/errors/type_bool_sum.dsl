fn count(x: f32[N, 10]) {
    positive = x > 0
    return sum(positive, axis=1)
}
