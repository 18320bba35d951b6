fn scale(x, factor) {
    return x * factor
}
fn main(x: f32[N, 10]) {
    return scale(x, 2.0, 3.0)
}
