fn shrink(x: f32[N, 10]) {
    repeat { x = x * 0.5 }
    return x
}
