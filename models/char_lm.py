"""char_lm: a tiny decoder-only transformer over characters of Python source (stdlib_text).

GPT-style, pre-LayerNorm, standard tf_keras layers only (no Lambda, no custom layer):

    tokens (B, T) int32 -> Embedding(VOCAB, D)  ┐
    positions (B, T) int32 -> Embedding(T, D)    ┴ Add
    BLOCKS x [ x + MultiHeadAttention(HEADS, D / HEADS, causal)(LayerNorm(x))
               x + Dense(D)(Dense(FF, gelu)(LayerNorm(x))) ]
    LayerNorm -> Dense(VOCAB): logits (B, T, VOCAB)

The causal mask is ``use_causal_mask=True`` on the attention call: position t sees positions
0..t only, so the logits at t predict character t + 1 from the characters up to t, and a
prompt shorter than T can be fed left-aligned (pipeline/tflite/generate.py). Positions are an
input rather than a constant so the graph has no Lambda/ops layer; a phone feeds 0..T-1.
Ships untrained (zoo models are trained by the run's float stage).
"""

from __future__ import annotations

from models.char_lm_data import VOCAB, WINDOW

DATASET = "stdlib_text"
D = 128          # model width
HEADS = 4        # attention heads, key_dim D / HEADS
BLOCKS = 3       # transformer blocks
FF = 4 * D       # feed-forward width
EPSILON = 1e-5   # LayerNormalization epsilon


def build(keras, *, window: int = WINDOW, vocab: int = VOCAB, d: int = D, heads: int = HEADS,
          blocks: int = BLOCKS, ff: int = FF):
    """The untrained architecture (tf_keras is passed in: this module never imports it).
    The keyword arguments make smaller variants for tests; the zoo model uses the defaults."""
    L = keras.layers
    tokens = keras.Input((window,), dtype="int32", name="tokens")
    positions = keras.Input((window,), dtype="int32", name="positions")
    x = L.Add(name="embed")([L.Embedding(vocab, d, name="token_embedding")(tokens),
                             L.Embedding(window, d, name="position_embedding")(positions)])
    for i in range(blocks):
        h = L.LayerNormalization(epsilon=EPSILON, name=f"block{i}_ln1")(x)
        h = L.MultiHeadAttention(heads, d // heads, name=f"block{i}_attention")(
            h, h, use_causal_mask=True)
        x = L.Add(name=f"block{i}_add1")([x, h])
        h = L.LayerNormalization(epsilon=EPSILON, name=f"block{i}_ln2")(x)
        h = L.Dense(ff, activation="gelu", name=f"block{i}_ff1")(h)
        h = L.Dense(d, name=f"block{i}_ff2")(h)
        x = L.Add(name=f"block{i}_add2")([x, h])
    x = L.LayerNormalization(epsilon=EPSILON, name="final_ln")(x)
    logits = L.Dense(vocab, name="logits")(x)
    return keras.Model([tokens, positions], logits, name="char_lm")
