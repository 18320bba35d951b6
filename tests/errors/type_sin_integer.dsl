fn wave(step: i64[N]) {
    return sin(step)
}
