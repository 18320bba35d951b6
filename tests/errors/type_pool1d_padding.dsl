fn pooled(x: f32[N, 4, 50]) {
    return avg_pool1d(x, 3, strides=1, padding=[1, 3])
}
