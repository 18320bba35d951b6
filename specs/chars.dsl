# A character-level language model on plain text (`data = text`): the 32 characters of a window
# predict the one after it. The text: any UTF-8 file of at most 128 distinct characters, e.g.
# CPython's own documentation (`python tests/test_training_features.py DIR` writes DIR/topics.txt):
#   dslc train specs/chars.dsl --data DIR/topics.txt

model CharMLP(chars: i64[N, 32]) -> logits {
    h = embedding(chars, 128, 24) |> flatten          # a row per character class: 128 >= the text's
    h = dense(h, 256) |> relu
    logits = dense(h, 128)
}

step train_chars(chars: i64[N, 32], next_char: i64[N]) updates CharMLP using adam(lr=0.002) {
    minimize sparse_categorical_crossentropy(CharMLP(chars), next_char, from_logits=true)
}

train pydoc {
    data       = text
    seq        = 32                                   # windows of 32 characters ...
    stride     = 4                                    # ... starting every 4
    validation = 0.1                                  # the text's last tenth
    batch      = 128
    epochs     = 3
    steps      = [train_chars(chars, next_char)]
    evaluate   = [bits_per_character(CharMLP(chars), next_char), accuracy(CharMLP(chars), next_char)]
    monitor    = val_bits_per_character
}
