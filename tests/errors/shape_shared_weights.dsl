# target: both
model Head(x) -> y {
    y = dense(x, 10)
}
fn both(a: f32[N, 64], b: f32[N, 32]) {
    return Head(a) + Head(b)
}
