model Encoder(x: f32[N, 784]) -> (z_mean, z_log_var) {
    z_mean    = dense(x, 2)
    z_log_var = dense(x, 2)
}
fn code(x: f32[N, 784]) {
    return Encoder(x) * 2
}
