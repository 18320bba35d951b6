layer Block(x, units: int) {
    return dense(x, units) |> relu
}
model Net(x: f32[N, 784]) -> y {
    y = Block(x, 10)
}
step train(x: f32[N, 784]) updates Net using sgd(lr=0.1) {
    minimize mean(Block(Net(x), 10))
}
