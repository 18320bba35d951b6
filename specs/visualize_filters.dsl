# What does a conv filter respond to? Gradient ascent in input space (tfjs-examples
# visualize-convnet, Deep Learning with JavaScript ch. 7.2; SEEDS.md section 3), on the small
# ConvNet of convnet.dsl (trained by dslc) instead of VGG16.

import "convnet.dsl"

# One ascent step: the gradient of the filter's mean activation (conv2, post-ReLU) with respect
# to the input image, normalized by its RMS (plus Keras' epsilon), added to the image; pixels stay
# in [0, 1]. (tfjs applies the model with training: true; nothing before conv2 depends on the mode.)
fn ascend(image: f32[1, 1, 28, 28], filter: i64) {
    act = ConvNet(image).conv2                     # [1, 64, 14, 14], post-ReLU
    g   = grad(mean(act[:, filter]), image)
    return clip(image + g / (sqrt(mean(g^2)) + 1e-7), 0, 1)
}

# The whole search as one graph: a gray noise image, then 80 ascent steps (an ONNX Loop).
fn visualize(filter: i64) {
    image = random_uniform([1, 1, 28, 28], 0.4, 0.6)
    repeat 80 { image = ascend(image, filter) }
    return image
}
