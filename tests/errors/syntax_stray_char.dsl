model Classifier(x: f32[N, 784]) -> y {
    h = dense(x, 128) $ relu
    y = dense(h, 10)
}
