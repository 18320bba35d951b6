fn add(x: f32[N, 10], labels: i64[N, 10]) {
    return x + labels
}
