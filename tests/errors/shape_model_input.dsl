model Classifier(x: f32[N, 784]) -> y {
    y = dense(x, 10)
}
fn classify(image: f32[N, 1, 28, 28]) {
    return Classifier(image)
}
