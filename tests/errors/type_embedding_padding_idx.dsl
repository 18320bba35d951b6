model Net(x: i64[N, 10]) -> y {
    y = embedding(x, 100, 16, padding_idx=100)
}
