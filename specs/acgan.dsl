# ACGAN on MNIST (tfjs-examples mnist-acgan, after Keras mnist_acgan.py; SEEDS.md section 5).
# Channels-first: images are f32[N, 1, 28, 28] scaled to [-1, 1] to match the generator's tanh.
# Generator 2,657,897 params (576 of them batch-norm moving statistics); Discriminator 525,835.

import "convnet.dsl"   # the `mnist` training of ConvNet: the judge of the generated digits

model Generator(z: f32[N, 100], cls: i64[N]) -> image {
    emb   = embedding(cls, 10, 100, init=glorot_normal)            # [N, 100]
    h     = z * emb                                                # the latent code, class-modulated
    fc    = dense(h, 3456, activation=relu)                        # 3 * 3 * 384
    grid  = reshape(fc, [-1, 384, 3, 3])                           # [N, 384, 3, 3]
    up1   = conv2d_transpose(grid, 192, kernel=5, strides=1, padding=valid, activation=relu,
                             kernel_init=glorot_normal)            # [N, 192, 7, 7]
    bn1   = batch_norm(up1)
    up2   = conv2d_transpose(bn1, 96, kernel=5, strides=2, padding=same, activation=relu,
                             kernel_init=glorot_normal)            # [N, 96, 14, 14]
    bn2   = batch_norm(up2)
    image = conv2d_transpose(bn2, 1, kernel=5, strides=2, padding=same, activation=tanh,
                             kernel_init=glorot_normal)            # [N, 1, 28, 28]
}

model Discriminator(image: f32[N, 1, 28, 28]) -> (realness, class_probs) {
    conv1       = conv2d(image, 32, kernel=3, strides=2, padding=same) |> leaky_relu(0.2) |> dropout(0.3)
    conv2       = conv2d(conv1, 64, kernel=3, strides=1, padding=same) |> leaky_relu(0.2) |> dropout(0.3)
    conv3       = conv2d(conv2, 128, kernel=3, strides=2, padding=same) |> leaky_relu(0.2) |> dropout(0.3)
    conv4       = conv2d(conv3, 256, kernel=3, strides=1, padding=same) |> leaky_relu(0.2) |> dropout(0.3)
    features    = flatten(conv4)                                   # [N, 12544]
    realness    = dense(features, 1, activation=sigmoid)           # [N, 1]: is the image real?
    class_probs = dense(features, 10, activation=softmax)          # [N, 10]: which digit?
}

# The intended ACGAN discriminator step (Keras original): it trains ALL discriminator weights.
# (tfjs quirk: setting discriminator.trainable = false after compiling freezes the two dense heads
# in this step too, so tfjs trains only the 4 conv layers here; see refs/mnist-acgan.md.)
# It draws its own latent codes z ~ U(-1, 1) and classes for the N fakes (a pure function of the
# step's `seed` and `step` inputs). The generator runs in inference mode (batch norm on its moving
# statistics), as predict() does.
step train_discriminator(real: f32[N, 1, 28, 28], real_class: i64[N])
        updates Discriminator using adam(lr=0.0002, beta1=0.5) {
    z              = random_uniform([N, 100], -1, 1)
    fake_class     = randint(10, [N])
    fake           = stop_gradient(Generator(z, fake_class, training=false))
    real_p, real_c = Discriminator(real)
    fake_p, fake_c = Discriminator(fake)
    minimize binary_crossentropy(real_p, 0.95) + binary_crossentropy(fake_p, 0.0)   # soft one: 0.95
           + sparse_categorical_crossentropy(real_c, real_class)
           + sparse_categorical_crossentropy(fake_c, fake_class)
    metric real_accuracy = mean(cast(real_p > 0.5, f32))
    metric fake_accuracy = mean(cast(fake_p < 0.5, f32))
}

# The combined model, on n fresh latent codes and classes (tfjs: n = 2 * batch): realness targets
# set to the soft one to fool the discriminator, classes as asked. Gradients flow through D into G;
# only the Generator is updated (D is frozen here: its weights are inputs the step does not change).
step train_generator(n: i64) updates Generator using adam(lr=0.0002, beta1=0.5) {
    z    = random_uniform([n, 100], -1, 1)
    cls  = randint(10, [n])
    p, c = Discriminator(Generator(z, cls))
    minimize binary_crossentropy(p, 0.95) + sparse_categorical_crossentropy(c, cls)
}

# `dslc train specs/acgan.dsl`: per batch the discriminator step, then the generator step on twice
# as many samples (as the TF.js example). After each epoch: the share of 1,000 generated digits
# that a ConvNet trained by `mnist` (convnet.dsl; trained first into judge-mnist/) classifies as
# the class asked for, and a grid of generated digits, one row per class.
train acgan {
    data     = mnist
    image    = image |> scale(-1, 1) |> channels_first           # the generator's tanh range
    batch    = 100
    epochs   = 20
    steps    = [train_discriminator(image, label), train_generator(2 * batch)]
    evaluate = generated_accuracy(Generator, judge=mnist)
    show     = [class_grid(Generator)]
    export   = Generator
}
