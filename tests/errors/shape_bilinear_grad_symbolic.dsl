# target: g
model Up(x: f32[N, 3, H, W]) -> y {
    y = upsample2d(x, 2, mode=bilinear) |> conv2d(4, 3, padding=same)
}
fn g(x: f32[N, 3, H, W]) { return grad(sum(Up(x)), x) }
