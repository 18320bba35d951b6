# A small causal transformer (GPT-style, pre-norm) that reads CPython's documentation one character
# at a time and predicts each character's successor: scores [N, 64, 128] against `next` [N, 64].
# The text: `python tests/test_training_features.py DIR` writes DIR/topics.txt (pydoc_data.topics,
# no download):
#
#   dslc train specs/charlm.dsl --data DIR/topics.txt
#
# Sized for a few minutes on 2 CPU cores: 2 blocks of width 64 with 4 heads of 16 over a context of
# 64 characters (120,704 weights; a step of 32 windows scores 2,048 predictions, ~50 ms). Width 128
# took 6x as long per step (~290 ms), so fewer passes over the text in the same minutes.

# One transformer block: causal self-attention, then a 4x wider GELU MLP, each on a layer-normed
# copy of its input and added back to it (the residual stream).
layer Block(x, width: int, heads: int) {
    norm1 = layer_norm(x)
    attn  = multi_head_attention(norm1, norm1, norm1, heads, causal=true)
    h     = x + attn
    norm2 = layer_norm(h)
    up    = dense(norm2, 4 * width) |> gelu
    down  = dense(up, width)
    return h + down
}

model CharTransformer(chars: i64[N, 64]) -> logits {
    token  = embedding(chars, 128, 64)                 # [N, 64, 64]: a row per character class (128 >= the text's)
    pos    = positional_embedding(token)               # [64, 64]: a learned row per position
    block1 = Block(token + pos, 64, 4)
    block2 = Block(block1, 64, 4)
    norm   = layer_norm(block2)
    logits = dense(norm, 128)                          # [N, 64, 128]: each position's next character
}

step train_charlm(chars: i64[N, 64], next: i64[N, 64]) updates CharTransformer using adam(lr=0.002, clip_norm=1.0) {
    minimize sparse_categorical_crossentropy(CharTransformer(chars), next, from_logits=true)
}

train pydoc_transformer {
    data       = text
    seq        = 64                                    # windows of 64 characters side by side
    validation = 0.1                                   # the text's last tenth
    batch      = 32
    epochs     = 10
    steps      = [train_charlm(chars, next)]
    evaluate   = bits_per_character(CharTransformer(chars), next)
    monitor    = val_bits_per_character
}
