model Net(x: f32[N, 784]) -> y {
    y = relu(dense(x, 10)))
}
