# A small convnet on an image folder: scikit-learn's bundled 8x8 digits (1,797 images, README
# "Data"), written out as root/train/<class>/*.png and root/test/<class>/*.png by
# `python tests/test_data_formats.py DIR` (no download):
#
#   dslc train specs/digits.dsl --data DIR/digits
#   dslc train specs/digits.dsl --data DIR/digits --target digits_augmented
#
# The class folders' names, sorted, are the labels 0-9; the images are read with Pillow as
# u8[N, 8, 8] (grey; a colour folder gives u8[N, h, w, 3]).

model DigitsNet(image: f32[N, 1, 8, 8]) -> logits {
    conv1  = conv2d(image, 16, kernel=3, padding=same) |> relu     # [N, 16, 8, 8]
    pool1  = max_pool2d(conv1, 2)                                  # [N, 16, 4, 4]
    conv2  = conv2d(pool1, 32, kernel=3, padding=same) |> relu     # [N, 32, 4, 4]
    pool2  = max_pool2d(conv2, 2)                                  # [N, 32, 2, 2]
    logits = dense(flatten(pool2), 10)                             # [N, 10]
}

step train_digits(image: f32[N, 1, 8, 8], label: i64[N]) updates DigitsNet using adam(lr=0.003) {
    minimize sparse_categorical_crossentropy(DigitsNet(image), label, from_logits=true)
}

train digits {
    data       = images
    image      = image |> scale(0, 1) |> channels_first           # u8[N, 8, 8] -> f32[N, 1, 8, 8]
    batch      = 32
    epochs     = 20
    validation = 0.1
    steps      = [train_digits(image, label)]
    evaluate   = accuracy(DigitsNet(image), label)
    show       = [kernels(DigitsNet)]
}

# The same with augmentation: each training image enlarged to 10x10, then a random 8x8 window of it
# (evaluation sees the centre window). Digits are not mirrored: random_flip would turn 2s into
# something else.
train digits_augmented {
    data       = images
    image      = image |> resize(10, 10) |> random_crop(8, 8) |> scale(0, 1) |> channels_first
    batch      = 32
    epochs     = 20
    validation = 0.1
    steps      = [train_digits(image, label)]
    evaluate   = accuracy(DigitsNet(image), label)
}
