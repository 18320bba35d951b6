fn cube(mask: bool[N]) {
    return mask ** 3
}
