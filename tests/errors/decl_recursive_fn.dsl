fn halve(x) {
    return halve(x / 2)
}
fn main(x: f32[N, 10]) {
    return halve(x)
}
