model Encoder(x: f32[N, 784]) -> (z_mean, z, z) {
    z_mean = dense(x, 2)
    z      = dense(x, 2)
}
