# Fine-tuning an imported ONNX model: a small CNN pretrained in PyTorch on MNIST (shrunk to 8x8) and
# exported with torch.onnx.export, its weights trained further here with a new head, on
# scikit-learn's 8x8 digits as an image folder (specs/digits.dsl says how to write it):
#
#   dslc train specs/finetune.dsl --data DIR/digits                    # backbone and head trained
#   dslc train specs/finetune.dsl --data DIR/digits --target probe     # the backbone frozen
#
# digits_backbone.onnx (57 KB) is written by `python bench/export_backbone.py` (needs torch).
# Its input `image` is f32[N, 1, 8, 8], its output `features` f32[N, 32]; its initializers (the
# convolutions, each BatchNorm folded in by the exporter) are the weights Backbone.<name>.

model Backbone = onnx("digits_backbone.onnx")

model Head(features: f32[N, 32]) -> logits {
    logits = dense(features, 10)
}

# The whole classifier, for evaluation and export (its weights are Backbone's and Head's).
model Classifier(image: f32[N, 1, 8, 8]) -> logits {
    logits = Head(Backbone(image).features)
}

step finetune(image: f32[N, 1, 8, 8], label: i64[N]) updates Head, Backbone using adam(lr=0.001) {
    minimize sparse_categorical_crossentropy(Classifier(image), label, from_logits=true)
}

# A linear probe: the same head on the frozen features (Backbone is not among the updated models).
step train_head(image: f32[N, 1, 8, 8], label: i64[N]) updates Head using adam(lr=0.003) {
    minimize sparse_categorical_crossentropy(Head(Backbone(image).features), label, from_logits=true)
}

train digits {
    data       = images
    image      = image |> scale(0, 1) |> channels_first           # u8[N, 8, 8] -> f32[N, 1, 8, 8]
    batch      = 32
    epochs     = 10
    validation = 0.1
    steps      = [finetune(image, label)]
    evaluate   = accuracy(Classifier(image), label)
    export     = Classifier
}

train probe {
    data       = images
    image      = image |> scale(0, 1) |> channels_first
    batch      = 32
    epochs     = 10
    validation = 0.1
    steps      = [train_head(image, label)]
    evaluate   = accuracy(Classifier(image), label)
    export     = Classifier
}
