layer Block(x, units: int) {
    return dense(x, units) |> relu
}
model Net(x: f32[N, 784]) -> y {
    y = Block(x, 0.5)
}
