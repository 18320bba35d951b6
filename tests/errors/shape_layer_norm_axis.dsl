model Net(x: f32[N, 16]) -> y {
    y = layer_norm(x, axis=2)
}
