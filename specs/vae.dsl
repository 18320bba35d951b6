# Variational autoencoder for Fashion-MNIST (tfjs-examples fashion-mnist-vae; SEEDS.md section 4).
# Images are flattened to f32[N, 784] in [0, 1]; the latent space has 2 dimensions.
# Encoder 403,972 + Decoder 403,728 = 807,700 params, all trainable.

model Encoder(x: f32[N, 784]) -> (z_mean, z_log_var, z) {
    h         = dense(x, 512) |> relu                              # [N, 512]
    z_mean    = dense(h, 2)                                        # [N, 2]
    z_log_var = dense(h, 2)                                        # [N, 2]
    # The sampling layer (the reparametrization trick): exp(0.5 * log variance) is the standard
    # deviation; eps ~ N(0, I) is drawn on every call and the gradient treats it as a constant.
    z         = z_mean + exp(0.5 * z_log_var) * random_normal(like=z_mean)
}

model Decoder(z: f32[N, 2]) -> x_hat {
    h     = dense(z, 512) |> relu                                  # [N, 512]
    x_hat = dense(h, 784) |> sigmoid                               # [N, 784]
}

# The whole autoencoder, as tfjs' vae_mlp: outputs [decoded, zMean, zLogVar, z].
model VAE(x: f32[N, 784]) -> (x_hat, z_mean, z_log_var, z) {
    z_mean, z_log_var, z = Encoder(x)
    x_hat = Decoder(z)
}

# Reconstruction (tf.losses.meanSquaredError * 784, i.e. the per-image sum of squared errors
# averaged over the batch) plus the KL divergence from N(0, I), averaged over the batch.
fn vae_loss(x, x_hat, z_mean, z_log_var) {
    recon = 784 * mean((x - x_hat)^2)
    kl    = mean(-0.5 * sum(1 + z_log_var - z_mean^2 - exp(z_log_var), axis=1))
    return recon + kl
}

# tf.train.adam() defaults: lr 0.001, beta1 0.9, beta2 0.999, eps 1e-7.
step train_vae(x: f32[N, 784]) updates Encoder, Decoder using adam(lr=0.001) {
    z_mean, z_log_var, z = Encoder(x)
    minimize vae_loss(x, Decoder(z), z_mean, z_log_var)
}

# `dslc train specs/vae.dsl`: Fashion-MNIST as the TF.js example trains it (Adam, batch 256), the
# test loss per epoch (784 x MSE + KL), the decoded 2-D latent grid and test reconstructions.
train fashion_vae {
    data     = fashion_mnist
    image    = image |> scale(0, 1) |> flatten                   # u8[N, 28, 28] -> f32[N, 784]
    batch    = 256
    epochs   = 20
    steps    = [train_vae(image)]
    evaluate = loss(train_vae(image))
    show     = [latent_grid(Decoder), reconstructions(VAE(image))]
    export   = [Decoder, Encoder]
}
