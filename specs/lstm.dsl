# An LSTM character language model on plain text (`data = text`): CPython's own documentation,
# written out by `python tests/test_training_features.py DIR` as DIR/topics.txt (no download):
#
#   dslc train specs/lstm.dsl --data DIR/topics.txt
#
# (specs/chars.dsl has an MLP over a window on the same text, specs/charlm.dsl a causal transformer.)

# An LSTM of 128 units that predicts every character's successor: scores [N, 32, 128]
# against `next` [N, 32], windows side by side.
model CharLSTM(chars: i64[N, 32]) -> logits {
    h = embedding(chars, 128, 32) |> lstm(128, return_sequences=true)
    logits = dense(h, 128)
}

step train_lstm(chars: i64[N, 32], next: i64[N, 32]) updates CharLSTM using adam(lr=0.005, clip_norm=1.0) {
    minimize sparse_categorical_crossentropy(CharLSTM(chars), next, from_logits=true)
}

train pydoc_lstm {
    data       = text
    seq        = 32
    validation = 0.1
    batch      = 64
    epochs     = 20
    steps      = [train_lstm(chars, next)]
    evaluate   = bits_per_character(CharLSTM(chars), next)
    monitor    = val_bits_per_character
}
