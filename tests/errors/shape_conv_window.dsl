model Net(image: f32[N, 1, 8, 8]) -> y {
    y = conv2d(image, 4, kernel=3) |> max_pool2d(4) |> conv2d(8, kernel=3)
}
