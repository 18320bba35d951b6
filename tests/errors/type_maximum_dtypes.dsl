fn clamp(x: f32[N, 4], floor_at: i64[N, 4]) {
    return maximum(x, floor_at)
}
