model Net(x: f23[N, 784]) -> y {
    y = dense(x, 10)
}
