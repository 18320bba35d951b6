# Tabular data: MLPs on CSV files (a header row, numeric columns, the one to predict named `label`
# or `target`; README "Data"). The data comes with --data: scikit-learn's bundled wine and diabetes
# tables, written out by `python tests/test_data_formats.py DIR` (no download):
#
#   dslc train specs/tabular.dsl --target wine     --data DIR/wine/train.csv
#   dslc train specs/tabular.dsl --target diabetes --data DIR/diabetes/train.csv
#
# Both standardise their features with the training split's mean and deviation (`standardize`,
# fitted once, applied to every split) and hold 10% of the training rows out for validation.

# Wine: 13 chemical measurements -> one of 3 cultivars (178 wines).
model WineMLP(x: f32[N, 13]) -> logits {
    hidden = dense(x, 32) |> relu                                  # [N, 32]
    logits = dense(hidden, 3)                                      # [N, 3]
}

step train_wine(x: f32[N, 13], label: i64[N]) updates WineMLP using adam(lr=0.01) {
    minimize sparse_categorical_crossentropy(WineMLP(x), label, from_logits=true)
}

# Diabetes: 10 baseline measurements -> disease progression a year later (442 patients).
model DiabetesMLP(x: f32[N, 10]) -> progression {
    hidden      = dense(x, 32) |> relu                             # [N, 32]
    progression = reshape(dense(hidden, 1), [-1])                  # [N]
}

step train_diabetes(x: f32[N, 10], y: f32[N]) updates DiabetesMLP using adam(lr=0.003) {
    minimize mse(DiabetesMLP(x), y)
}

train wine {
    data       = csv
    x          = features |> standardize                          # f32[N, 13], z-scores
    batch      = 16
    epochs     = 20
    validation = 0.1
    steps      = [train_wine(x, label)]
    evaluate   = accuracy(WineMLP(x), label)
}

# The target is standardised too (so the MSE and MAE are in standard deviations of the training
# targets; R^2 is the same in any unit).
train diabetes {
    data       = csv
    x          = features |> standardize
    y          = label |> float32 |> standardize                  # i64[N] -> f32[N]
    batch      = 32
    epochs     = 40
    validation = 0.1
    steps      = [train_diabetes(x, y)]
    evaluate   = [r2(DiabetesMLP(x), y), mse(DiabetesMLP(x), y), mae(DiabetesMLP(x), y)]
}
