# MNIST convolutional networks (channels-first: images are f32[N, 1, 28, 28] in [0, 1]).
#
#   ConvNet           the convnet of the language sketch (421,642 params); visualize_filters.dsl
#                     runs gradient ascent on its conv2 activation
#   MnistConvNet      tfjs-examples `mnist/` createConvModel() (33,194 params)
#   MnistNodeConvNet  tfjs-examples `mnist-node/` model.js (594,922 params)
#
# Keras defaults throughout: Glorot-uniform kernels, zero biases, stride 1, valid padding,
# pools of 2 with stride 2.

model ConvNet(image: f32[N, 1, 28, 28]) -> logits {
    conv1  = conv2d(image, 32, kernel=3, padding=same) |> relu     # [N, 32, 28, 28]
    pool1  = max_pool2d(conv1, 2)                                  # [N, 32, 14, 14]
    conv2  = conv2d(pool1, 64, kernel=3, padding=same) |> relu     # [N, 64, 14, 14]
    pool2  = max_pool2d(conv2, 2)                                  # [N, 64, 7, 7]
    hidden = dense(flatten(pool2), 128) |> relu                    # [N, 128]
    logits = dense(dropout(hidden, 0.25), 10)                      # [N, 10]
}

step train_convnet(image: f32[N, 1, 28, 28], label: i64[N]) updates ConvNet using adam(lr=0.001) {
    minimize sparse_categorical_crossentropy(ConvNet(image), label, from_logits=true)
}

# tfjs-examples mnist/index.js, createConvModel(): 160 + 4,640 + 9,248 + 18,496 + 650 = 33,194.
model MnistConvNet(image: f32[N, 1, 28, 28]) -> probs {
    conv1  = conv2d(image, 16, kernel=3, activation=relu)          # [N, 16, 26, 26]
    pool1  = max_pool2d(conv1, 2)                                  # [N, 16, 13, 13]
    conv2  = conv2d(pool1, 32, kernel=3, activation=relu)          # [N, 32, 11, 11]
    pool2  = max_pool2d(conv2, 2)                                  # [N, 32, 5, 5]
    conv3  = conv2d(pool2, 32, kernel=3, activation=relu)          # [N, 32, 3, 3]
    hidden = dense(flatten(conv3), 64, activation=relu)            # [N, 64]
    probs  = dense(hidden, 10, activation=softmax)                 # [N, 10]
}

# model.compile({optimizer: 'rmsprop', loss: 'categoricalCrossentropy'}): one-hot labels;
# the string 'rmsprop' is tf.train.rmsprop(0.001) with rho 0.9, eps 1e-7.
step train_mnist_convnet(image: f32[N, 1, 28, 28], label: f32[N, 10])
        updates MnistConvNet using rmsprop(lr=0.001) {
    minimize categorical_crossentropy(MnistConvNet(image), label)
}

# tfjs-examples mnist-node/model.js: 320 + 9,248 + 18,496 + 36,928 + 524,800 + 5,130 = 594,922.
model MnistNodeConvNet(image: f32[N, 1, 28, 28]) -> probs {
    conv1  = conv2d(image, 32, kernel=3, activation=relu)          # [N, 32, 26, 26]
    conv2  = conv2d(conv1, 32, kernel=3, activation=relu)          # [N, 32, 24, 24]
    pool1  = max_pool2d(conv2, 2)                                  # [N, 32, 12, 12]
    conv3  = conv2d(pool1, 64, kernel=3, activation=relu)          # [N, 64, 10, 10]
    conv4  = conv2d(conv3, 64, kernel=3, activation=relu)          # [N, 64, 8, 8]
    pool2  = max_pool2d(conv4, 2)                                  # [N, 64, 4, 4]
    flat   = dropout(flatten(pool2), 0.25)                         # [N, 1024]
    hidden = dense(flat, 512, activation=relu)                     # [N, 512]
    probs  = dense(dropout(hidden, 0.5), 10, activation=softmax)   # [N, 10]
}

step train_mnist_node_convnet(image: f32[N, 1, 28, 28], label: f32[N, 10])
        updates MnistNodeConvNet using rmsprop(lr=0.001) {
    minimize categorical_crossentropy(MnistNodeConvNet(image), label)
}

# ---------------------------------------------------------------- training (`dslc train specs/convnet.dsl`)
# The README's first command: the ConvNet above on MNIST (the embedded 5,000-image subset when no
# --data is given); its trained weights feed visualize_filters.dsl.
train mnist {
    data     = mnist
    image    = image |> scale(0, 1) |> channels_first            # u8[N, 28, 28] -> f32[N, 1, 28, 28]
    batch    = 64
    epochs   = 3
    steps    = [train_convnet(image, label)]
    evaluate = accuracy(ConvNet(image), label)
    show     = [kernels(ConvNet)]
}

# tfjs-examples mnist/: rmsprop, batch 320 (there: 3 epochs on 46,750 images).
train mnist_small {
    data     = mnist
    image    = image |> scale(0, 1) |> channels_first
    onehot   = label |> one_hot(10)
    batch    = 320
    epochs   = 10
    steps    = [train_mnist_convnet(image, onehot)]
    evaluate = accuracy(MnistConvNet(image), label)
}

# tfjs-examples mnist-node/: rmsprop, batch 128, 20 epochs.
train mnist_node {
    data     = mnist
    image    = image |> scale(0, 1) |> channels_first
    onehot   = label |> one_hot(10)
    batch    = 128
    epochs   = 20
    steps    = [train_mnist_node_convnet(image, onehot)]
    evaluate = accuracy(MnistNodeConvNet(image), label)
}
