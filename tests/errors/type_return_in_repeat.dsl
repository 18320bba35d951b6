fn halve(x: f32[N, 10]) {
    repeat 3 {
        x = x / 2
        return x
    }
}
