model Net(x: f32[N, 784]) -> y {
    y = dense(x, 10)
}
y = Net(x)
