# Backprop by the chain rule (Deep Learning with JavaScript, ch. 2; SEEDS.md section 1).
#
# One weight:  y' = v * x, loss (y' - y)^2. At v = 0, x = 2, y = 5 the gradient is
#   dloss/dv = 2 * (y' - y) * x = 2 * (0 - 5) * 2 = -20,
# so one SGD step with lr 0.01 moves v to 0 - 0.01 * (-20) = 0.2; repeated steps approach
# v = y / x = 2.5.
# Two weights: y' = k * x + b; the gradients of k and b share the backward edge from the loss
# to y'. A batch averages the squared errors (mse is their mean over the batch).

model Scale(x: f32[N, 1]) -> y_pred {
    y_pred = dense(x, 1, use_bias=false, kernel_init=zeros)        # v starts at 0: Scale.y_pred.weight
}

model Affine(x: f32[N, 1]) -> y_pred {
    y_pred = dense(x, 1, kernel_init=zeros)                        # k: Affine.y_pred.weight, b: Affine.y_pred.bias
}

step fit_scale(x: f32[N, 1], y: f32[N, 1]) updates Scale using sgd(lr=0.01) {
    minimize mse(Scale(x), y)
}

step fit_affine(x: f32[N, 1], y: f32[N, 1]) updates Affine using sgd(lr=0.01) {
    minimize mse(Affine(x), y)
}
