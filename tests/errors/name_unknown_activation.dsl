model Net(x: f32[N, 16]) -> y {
    y = dense(x, 8, activation=mesh)
}
