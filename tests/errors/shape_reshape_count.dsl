model Net(x: f32[N, 784]) -> y {
    y = reshape(x, [-1, 1, 28, 27]) |> conv2d(8, kernel=3)
}
