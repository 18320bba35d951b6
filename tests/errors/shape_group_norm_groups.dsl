model Net(x: f32[N, 6, 8, 8]) -> y {
    y = group_norm(x, 4)
}
