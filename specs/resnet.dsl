# A small ResNet (He et al. 2015, the CIFAR-style "basic block" net, shrunk) on an image folder:
# scikit-learn's bundled 8x8 digits written out as root/{train,test}/<class>/*.png by
# `python tests/test_data_formats.py DIR` (no download):
#
#   dslc train specs/resnet.dsl --data DIR/digits
#
# A stem convolution, a residual block at 16 channels, a strided block down to 4x4 at 32 channels
# (its shortcut a 1x1 strided projection, as the paper's option B), another residual block, then a
# global average pool and one dense layer. Convolutions before a batch norm have no bias (the
# norm's beta is the shift). The batch norms' moving statistics take a tenth of each batch's
# (momentum=0.9, torch's 0.1): at Keras' 0.99 they were still a third of the way from their start
# after the first epoch's 41 steps, and evaluation (which reads them) lagged training for 8 epochs.

# Two 3x3 convolutions with batch norms; the input added back before the last relu.
layer Residual(x, filters: int) {
    conv1 = conv2d(x, filters, kernel=3, padding=same, use_bias=false)
    norm1 = batch_norm(conv1, momentum=0.9) |> relu
    conv2 = conv2d(norm1, filters, kernel=3, padding=same, use_bias=false)
    norm2 = batch_norm(conv2, momentum=0.9)
    return relu(x + norm2)
}

# The same at stride 2 with `filters` channels out: the shortcut is a 1x1 convolution at stride 2
# (and its batch norm), so its shape matches the block's.
layer Downsample(x, filters: int) {
    conv1    = conv2d(x, filters, kernel=3, strides=2, padding=same, use_bias=false)
    norm1    = batch_norm(conv1, momentum=0.9) |> relu
    conv2    = conv2d(norm1, filters, kernel=3, padding=same, use_bias=false)
    norm2    = batch_norm(conv2, momentum=0.9)
    project  = conv2d(x, filters, kernel=1, strides=2, use_bias=false)
    shortcut = batch_norm(project, momentum=0.9)
    return relu(shortcut + norm2)
}

model DigitsResNet(image: f32[N, 1, 8, 8]) -> logits {
    stem   = conv2d(image, 16, kernel=3, padding=same, use_bias=false)   # [N, 16, 8, 8]
    norm   = batch_norm(stem, momentum=0.9) |> relu
    block1 = Residual(norm, 16)                                         # [N, 16, 8, 8]
    block2 = Downsample(block1, 32)                                     # [N, 32, 4, 4]
    block3 = Residual(block2, 32)                                       # [N, 32, 4, 4]
    pool   = global_avg_pool2d(block3)                                  # [N, 32]
    logits = dense(pool, 10)                                            # [N, 10]
}

step train_resnet(image: f32[N, 1, 8, 8], label: i64[N]) updates DigitsResNet using adam(lr=0.001) {
    minimize sparse_categorical_crossentropy(DigitsResNet(image), label, from_logits=true)
}

train digits_resnet {
    data       = images
    image      = image |> scale(0, 1) |> channels_first           # u8[N, 8, 8] -> f32[N, 1, 8, 8]
    batch      = 32
    epochs     = 15
    validation = 0.1
    steps      = [train_resnet(image, label)]
    evaluate   = accuracy(DigitsResNet(image), label)
    monitor    = val_accuracy
}
