"""Keras 3 transformers -> tf_keras (pipeline/keras/keras3.py): token + position Embedding,
LayerNormalization, MultiHeadAttention (self and cross; causal, explicit attention_mask),
EinsumDense, GELU / swish feed-forwards, residual adds. Tiny seeded random-weight models.

Tolerance (docs/architecture.md, Tolerances): outputs within 1e-5 x max(1, max|y|), every layer
within 1e-5 of its own scale (keras3.compare_outputs); each test recomputes the outputs on other
inputs than the translator's own check."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core import keras_env
from pipeline.core.errors import ModelFileError
from pipeline.keras import keras3

ATOL = 1e-5
T, VOCAB, D = 6, 11, 8


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype("float32"))
    return model


def _feeds(model3, seed):
    """Ids in range for each Embedding, positions 0..T-1, a random 0/1 mask (diagonal set)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in model3.inputs:
        if t.name == "mask":
            m = rng.integers(0, 2, (3, T, T)).astype("int32")
            m[:, np.arange(T), np.arange(T)] = 1
            out.append(m)
        elif t.name == "positions":
            out.append(np.tile(np.arange(T, dtype="int32"), (3, 1)))
        else:
            out.append(rng.integers(0, VOCAB, (3, T)).astype("int32"))
    return out


def _assert_same(model3, t, seed=11):
    assert t.max_abs_diff <= ATOL * max(1.0, t.output_scale) and t.max_layer_rel_diff <= ATOL
    xs = _feeds(model3, seed)
    y3 = np.asarray(model3(xs, training=False))
    y2 = t.model(xs, training=False).numpy()
    assert y3.shape == y2.shape
    np.testing.assert_allclose(y2, y3, rtol=0, atol=ATOL * max(1.0, np.abs(y3).max()))
    assert t.model.count_params() == model3.count_params()


def _classifier(k3, *, with_mask=False):
    """A pre-LayerNorm transformer classifier as a Keras 3 user writes it."""
    L = k3.layers
    tokens = k3.Input((T,), dtype="int32", name="tokens")
    positions = k3.Input((T,), dtype="int32", name="positions")
    inputs = [tokens, positions]
    x = L.Add(name="embed")([L.Embedding(VOCAB, D, name="tok_emb")(tokens),
                             L.Embedding(T, D, name="pos_emb")(positions)])
    h = L.LayerNormalization(epsilon=1e-5, name="ln1")(x)
    h = L.MultiHeadAttention(2, 4, name="causal_attn")(h, h, use_causal_mask=True)
    x = L.Add(name="add1")([x, h])
    if with_mask:
        mask = k3.Input((T, T), dtype="int32", name="mask")
        inputs.append(mask)
        h = L.LayerNormalization(name="ln_m")(x)
        h = L.MultiHeadAttention(2, 4, value_dim=3, name="masked_attn")(
            h, h, h, attention_mask=mask)
        x = L.Add(name="add_m")([x, h])
    h = L.LayerNormalization(name="ln2")(x)
    h = L.EinsumDense("btd,df->btf", output_shape=(T, 16), bias_axes="f",
                      activation="gelu", name="ff1")(h)
    h = L.Dense(D, activation="swish", name="ff2")(h)
    x = L.Add(name="add2")([x, h])
    x = L.GlobalAveragePooling1D(name="pool")(L.LayerNormalization(name="ln_f")(x))
    return k3.Model(inputs, L.Dense(3, name="head")(x), name="k3_transformer")


@pytest.mark.parametrize("with_mask", [False, True], ids=["causal", "causal+attention_mask"])
def test_transformer_classifier_round_trips_through_a_keras3_file(k3, tmp_path, with_mask):
    model3 = _randomize(_classifier(k3, with_mask=with_mask))
    path = tmp_path / "transformer.keras"
    model3.save(path)
    t = keras3.translate_keras3_file(path, seed=0)
    kinds = {type(layer).__name__ for layer in t.model.layers}
    assert {"Embedding", "MultiHeadAttention", "EinsumDense", "LayerNormalization"} <= kinds
    _assert_same(model3, t)
    # the causal mask survived: a change at the last position moves no earlier output
    attn = t.model.get_layer("causal_attn")
    probe = keras_env.load().keras.Model(t.model.inputs, attn.output)
    xs = _feeds(model3, 3)
    ys = probe(xs).numpy()
    xs[0] = xs[0].copy()
    xs[0][:, -1] = (xs[0][:, -1] + 1) % VOCAB
    ys2 = probe(xs).numpy()
    np.testing.assert_array_equal(ys2[:, :-1], ys[:, :-1])
    assert np.abs(ys2[:, -1] - ys[:, -1]).max() > 1e-3


def test_cross_attention_and_gelu_swish_activation_layers(k3):
    L = k3.layers
    q_in = k3.Input((T,), dtype="int32", name="tokens")
    kv_in = k3.Input((T + 2, D), name="memory")
    q = L.Embedding(VOCAB, D, name="emb")(q_in)
    kv = L.Activation("gelu", name="gelu")(L.Dense(D, name="mem_proj")(kv_in))
    h = L.MultiHeadAttention(2, 4, name="cross")(q, kv, L.Activation("swish", name="sw")(kv))
    h = L.EinsumDense("abc,cd->abd", output_shape=(None, 5), name="proj")(h)
    model3 = _randomize(k3.Model([q_in, kv_in], L.LayerNormalization(name="ln")(h)))
    t = keras3.to_tf_keras(model3)
    assert t.max_abs_diff <= ATOL * max(1.0, t.output_scale) and t.max_layer_rel_diff <= ATOL
    rng = np.random.default_rng(4)
    xs = [rng.integers(0, VOCAB, (2, T)).astype("int32"),
          rng.normal(0, 1, (2, T + 2, D)).astype("float32")]
    y3 = np.asarray(model3(xs))
    np.testing.assert_allclose(t.model(xs).numpy(), y3, rtol=0,
                               atol=ATOL * max(1.0, np.abs(y3).max()))


def test_random_ids_cover_each_embedding_table(k3):
    """The translator's own check feeds ids over the whole Embedding table, not just {0, 1}."""
    model3 = _randomize(_classifier(k3))
    t = keras3.to_tf_keras(model3)
    xs = keras3._random_inputs(t.model, 0, 50)
    assert xs[0].max() > 2 and xs[0].max() < VOCAB and xs[1].max() == T - 1


def test_untranslatable_attention_argument_names_the_layer(k3):
    L = k3.layers
    inp = k3.Input((T, D))
    out = L.MultiHeadAttention(2, 4, use_gate=True, name="gated")(inp, inp)
    with pytest.raises(ModelFileError) as err:
        keras3.to_tf_keras(k3.Model(inp, out))
    msg = str(err.value)
    assert "layer 'gated' (MultiHeadAttention)" in msg and "use_gate" in msg
    assert "\n" not in msg


def test_a_layer_tf_keras_cannot_call_is_named(k3, tfk):
    """A failure while tf_keras wires the graph names the layer and its class."""
    @k3.saving.register_keras_serializable(package="qat_tests")
    class Shift(k3.layers.Layer):
        def call(self, x):
            return x + 1.0

    class Broken(tfk.layers.Layer):
        def call(self, x):
            raise ValueError("cannot run here")

    inp = k3.Input((T, D))
    x = Shift(name="shift")(k3.layers.Dense(D, name="d0")(inp))
    model3 = k3.Model(inp, k3.layers.Dense(2, name="d1")(x))
    with pytest.raises(ModelFileError) as err:
        keras3.to_tf_keras(model3, tf_keras_objects={"Shift": Broken})
    msg = str(err.value)
    assert "could not rebuild" in msg and "layer 'shift' (Shift)" in msg and "\n" not in msg


def test_padding_masks_of_embedding_mask_zero(k3):
    """Keras 3 stores Embedding(mask_zero=True)'s mask as keras.ops.not_equal(ids, 0) passed
    as mask= to later layers; tf_keras propagates the same mask itself."""
    L = k3.layers
    inp = k3.Input((T,), dtype="int32", name="tokens")
    x = L.Embedding(VOCAB, D, mask_zero=True, name="emb")(inp)
    h = L.MultiHeadAttention(2, 4, name="attn")(x, x)
    out = L.Dense(3, name="head")(L.GlobalAveragePooling1D(name="pool")(h))
    model3 = _randomize(k3.Model(inp, out))
    t = keras3.to_tf_keras(model3)
    assert any("padding mask" in n for n in t.notes)
    ids = np.random.default_rng(2).integers(1, VOCAB, (4, T)).astype("int32")
    ids[:, -2:] = 0  # padded tails: masked out of attention and of the average
    y3 = np.asarray(model3(ids))
    np.testing.assert_allclose(t.model(ids).numpy(), y3, rtol=0,
                               atol=ATOL * max(1.0, np.abs(y3).max()))
    ids2 = ids.copy()
    ids2[:, -2:] = 5  # the same tokens unpadded give another answer: the mask mattered
    assert np.abs(np.asarray(model3(ids2)) - y3).max() > 1e-3
