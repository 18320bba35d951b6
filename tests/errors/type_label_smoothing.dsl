fn loss(probs: f32[N, 10], onehot: f32[N, 10]) {
    return categorical_crossentropy(probs, onehot, label_smoothing=1.5)
}
