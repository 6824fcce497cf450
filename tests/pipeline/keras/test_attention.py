"""MultiHeadAttention rewritten into quantizable primitives (pipeline/keras/attention.py).

Tolerance of the float equivalence: 1e-5 of the output scale, as every graph rewrite
(docs/architecture.md): the projections are Dense matmuls instead of einsums (other summation
orders) and the query's 1/sqrt(key_dim) is folded into its kernel (one rounding less), both
float32 rounding; a masked position's weight is at most e^-17 = 4.1e-8 of the row's largest,
below float32's 2^-24 (attention.HEADROOM)."""

import numpy as np
import pytest

from pipeline.core import keras_env
from pipeline.core.errors import ConversionError
from pipeline.keras import attention, graph
from pipeline.keras.plan import LayerStatus
from pipeline.stages import annotate, modelio
from pipeline.stages.config import AnnotateConfig

T, F, D, HEADS = 8, 6, 16, 2
KINDS = ("self", "cross", "mask", "int_mask", "causal_mask")


def block(keras, h, *, name: str, mask=None, causal=False, context=None, heads=HEADS,
          act="gelu"):
    """Pre-norm transformer block: LayerNormalization → MHA → Add → LayerNormalization →
    Dense(act) → Dense → Add."""
    L = keras.layers
    d = int(h.shape[-1])
    a = L.LayerNormalization(name=f"{name}_ln1")(h)
    kv = a if context is None else context
    a = L.MultiHeadAttention(heads, d // heads, name=f"{name}_mha")(
        a, kv, attention_mask=mask, use_causal_mask=causal)
    h = L.Add(name=f"{name}_add1")([h, a])
    f = L.LayerNormalization(name=f"{name}_ln2")(h)
    f = L.Dense(2 * d, activation=act, name=f"{name}_ff1")(f)
    f = L.Dense(d, name=f"{name}_ff2")(f)
    return L.Add(name=f"{name}_add2")([h, f])


def attention_model(keras, kind: str, classes: int = 4):
    """A one-block classifier over (T, F) float sequences with the attention variant ``kind``;
    masked variants take the (T, T) attention mask as a second input."""
    L = keras.layers
    x = keras.Input((T, F), name="seq")
    inputs = [x]
    h = L.EinsumDense("btf,fd->btd", output_shape=(T, D), bias_axes="d", name="embed")(x)
    mask = None
    if kind in ("mask", "causal_mask", "int_mask"):
        mask = keras.Input((T, T), name="mask", dtype="int32" if kind == "int_mask" else
                           "float32")
        inputs.append(mask)
    context = None
    if kind == "cross":  # attend to a shorter, differently projected sequence
        context = L.Dense(D, activation="swish", name="ctx")(L.AveragePooling1D(2)(h))
    if kind == "combo":  # every variant in one model (one conversion in the slow tests)
        fmask = keras.Input((T, T), name="mask")
        imask = keras.Input((T, T), name="int_mask", dtype="int32")
        inputs += [fmask, imask]
        h = block(keras, h, name="b0", mask=fmask, causal=True)
        ctx = L.Dense(D, activation="swish", name="ctx")(L.AveragePooling1D(2)(h))
        h = block(keras, h, name="b1", context=ctx, act="swish")
        h = block(keras, h, name="b2", mask=imask)
    else:
        h = block(keras, h, name="b0", mask=mask, causal=kind.startswith("causal"),
                  context=context)
    h = L.GlobalAveragePooling1D(name="pool")(L.LayerNormalization(name="ln_f")(h))
    return keras.Model(inputs, L.Dense(classes, name="head")(h), name=f"attn_{kind}")


def lm_model(keras, vocab: int = 16, t: int = T, d: int = D, blocks: int = 1):
    """The zoo LM's shape: tokens and positions (B, T) int32, token + positional Embedding,
    pre-norm causal blocks, final LayerNormalization, per-token logits (B, T, vocab)."""
    L = keras.layers
    tokens = keras.Input((t,), dtype="int32", name="tokens")
    positions = keras.Input((t,), dtype="int32", name="positions")
    h = L.Add(name="embed")([L.Embedding(vocab, d, name="tok_emb")(tokens),
                             L.Embedding(t, d, name="pos_emb")(positions)])
    for i in range(blocks):
        h = block(keras, h, name=f"b{i}", causal=True)
    h = L.LayerNormalization(name="ln_f")(h)
    return keras.Model([tokens, positions], L.Dense(vocab, name="logits")(h), name="tiny_lm")


def inputs_for(model, n: int, seed: int = 0) -> list:
    """Seeded inputs for ``model``: float sequences, 0/1 attention masks (every row keeps at
    least its diagonal), token ids and positions 0..T-1."""
    rng = np.random.default_rng(seed)
    out = []
    for t in model.inputs:
        shape = (n, *t.shape[1:])
        name = t.name.split(":")[0]
        if name in ("mask", "int_mask"):
            m = (rng.random(shape) < 0.6) | np.eye(shape[-1], dtype=bool)
            out.append(m.astype(t.dtype.as_numpy_dtype))
        elif name == "positions":
            out.append(np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy())
        elif name == "tokens":
            out.append(rng.integers(0, 16, shape).astype(np.int32))
        else:
            out.append(rng.normal(0, 1, shape).astype(np.float32))
    return out


def _randomize(model, seed: int = 0):
    """Weights far from their initial values (biases and LayerNorm gains included), so the
    equivalence is not checked on zero biases."""
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype)
                       for w in model.get_weights()])


@pytest.mark.parametrize("kind", KINDS + ("lm",))  # "causal": the LM's block
def test_rewrite_equals_multi_head_attention_in_float(kind, env):
    keras_env.set_seed(0)
    model = lm_model(env.keras) if kind == "lm" else attention_model(env.keras, kind)
    _randomize(model)
    r = graph.rebuild(model)
    names = [type(l).__name__ for l in r.model.layers]
    assert "MultiHeadAttention" not in names
    assert {"AttentionScores", "AttentionContext", "Softmax"} <= set(names)
    assert ("AttentionMask" in names) == (kind not in ("self", "cross"))
    [route] = r.attention
    assert route.name == "b0_mha" and route.params == model.get_layer("b0_mha").count_params()
    xs = inputs_for(model, 64)
    ref = model.predict(xs, verbose=0)
    got = r.model.predict(xs, verbose=0)
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)


def test_inner_attention_weights_match_keras(env):
    """The softmax output of the rewrite equals the MHA's own attention scores
    (return_attention_scores) for a causal + attention_mask layer."""
    keras = env.keras
    keras_env.set_seed(0)
    q = keras.Input((T, D))
    m = keras.Input((T, T))
    mha = keras.layers.MultiHeadAttention(HEADS, D // HEADS, name="mha")
    _, scores = mha(q, q, attention_mask=m, use_causal_mask=True,
                    return_attention_scores=True)
    probe = keras.Model([q, m], scores)
    plain = keras.Model([q, m], mha(q, q, attention_mask=m, use_causal_mask=True))
    _randomize(plain)
    r = graph.rebuild(plain)
    inner = keras.Model(r.model.inputs, r.model.get_layer("mha_softmax").output)
    xs = [np.random.default_rng(1).normal(0, 2, (32, T, D)).astype(np.float32),
          inputs_for(attention_model(keras, "mask"), 32)[1]]
    np.testing.assert_allclose(inner.predict(xs, verbose=0), probe.predict(xs, verbose=0),
                               rtol=0, atol=1e-6)


def test_coverage_reports_attention_einsum_and_layernorm_as_quantized(env):
    keras_env.set_seed(0)
    _, cov = annotate.prepare(attention_model(env.keras, "causal_mask"))
    by = {p.name: p for p in cov.layers}
    mha = by["b0_mha"]
    assert mha.status is LayerStatus.QUANTIZED and mha.cls == "MultiHeadAttention"
    assert "BATCH_MATMUL" in mha.detail and "row min - 17" in mha.detail
    assert mha.params == sum(by[p].params for p in mha.parts) > 0
    assert all(by[p].part_of == "b0_mha" for p in mha.parts)
    assert by["embed"].status is LayerStatus.QUANTIZED and by["embed"].own_config
    assert by["embed"].weight_attrs == ("kernel",)
    for name in ("b0_ln1", "b0_ln2", "ln_f"):  # keras/layernorm.py: one layer per int8 op
        ln = by[name]
        assert ln.status is LayerStatus.QUANTIZED and ln.cls == "LayerNormalization", ln
        assert [by[p].cls for p in ln.parts] == ["LNMean", "LNCenter", "LNSquare", "LNMean",
                                                 "LNEpsilon", "LNRsqrt", "LNNormalize",
                                                 "LNGamma", "LNBeta"]
        assert all(by[p].own_config and by[p].quantize_output for p in ln.parts)
    for name in ("b0_ff1", "b0_ff2", "b0_mha_q", "b0_mha_output"):  # keras/seqdense.py
        assert by[name].cls == "SequenceDense" and by[name].weight_attrs == ("kernel",)
    assert by["b0_ff1_act"].cls == "Activation"  # gelu is not fused into FULLY_CONNECTED
    assert "fallback" not in cov.by_status()
    assert cov.share()["layers"] == len([p for p in cov.layers if p.status.value != "input"
                                         and not p.part_of])
    md = cov.markdown()
    assert "| b0_mha | MultiHeadAttention | quantized | rewritten into" in md
    assert "| b0_ln1 | LayerNormalization | quantized | rewritten into 9 one-op layers" in md
    assert "| b0_mha_scores |" not in md  # parts are described by their layer's row


def test_policy_naming_the_attention_applies_to_its_parts(env):
    model = attention_model(env.keras, "self")
    _, cov = annotate.prepare(model, AnnotateConfig(exclude=["MultiHeadAttention"]))
    by = {p.name: p for p in cov.layers}
    assert by["b0_mha"].status is LayerStatus.EXCLUDED
    assert {by[p].status for p in by["b0_mha"].parts} == {LayerStatus.EXCLUDED}
    _, cov = annotate.prepare(model, AnnotateConfig(keep_float=["b0_mha"]))
    parts = {p.name: p for p in cov.layers}["b0_mha"].parts
    assert set(annotate.keep_float_layers(cov)) == set(parts)  # the parts, not the MHA


def test_unsupported_attention_is_refused_naming_the_layer(env):
    keras = env.keras
    x = keras.Input((4, 4, D))
    y = keras.layers.MultiHeadAttention(2, 4, attention_axes=(1, 2), name="axes_mha")(x, x)
    with pytest.raises(ConversionError, match=r"layer axes_mha \(MultiHeadAttention\)"):
        annotate.prepare(keras.Model(x, y))


def test_quantize_apply_failure_names_the_layer_and_its_class(env):
    """A registered layer whose compute_output_shape takes two shapes (as MultiHeadAttention's
    does) makes tfmot's wrapper fail inside quantize_apply: the error names that layer."""
    keras = env.keras

    @keras.utils.register_keras_serializable(package="qat_deploy_tests")
    class PairSum(keras.layers.Layer):
        def call(self, a, b):
            return a + b

        def compute_output_shape(self, a_shape, b_shape):
            return a_shape

    x = keras.Input((8,))
    h = keras.layers.Dense(8, name="d1")(x)
    y = keras.layers.Dense(3, name="d2")(PairSum(name="pair")(h, h))
    with pytest.raises(ConversionError, match=r"layer pair \(PairSum\)") as err:
        annotate.apply(keras.Model(x, y))
    assert "annotate.exclude = ['pair']" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.slow
def test_qat_model_with_attention_saves_and_reloads(env, tmp_path):
    from pipeline.stages.run import _save_h5

    keras_env.set_seed(0)
    model = attention_model(env.keras, "causal")
    qat, _ = annotate.apply(model)
    x = inputs_for(model, 16)[0]
    qat(x, training=True)  # ranges off their initial values
    path = tmp_path / "qat.h5"
    _save_h5(qat, path)
    loaded = modelio.load_model(path=str(path))
    assert loaded.is_qat
    kinds = {type(getattr(l, "layer", l)).__name__ for l in loaded.model.layers}
    assert {"AttentionScores", "AttentionMask", "AttentionContext"} <= kinds
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), qat.predict(x, verbose=0),
                               atol=1e-6)
    assert attention.layer_classes()["AttentionMask"] is type(
        loaded.model.get_layer("quant_b0_mha_mask").layer)


@pytest.mark.slow
def test_conversion_failure_names_the_layer_and_its_class(env):
    """digamma has no TFLite builtin kernel: the int8 conversion fails, and the one-line error
    names the layer it came from (the converter's message names only the op here)."""
    from pipeline.core.records import Variant
    from pipeline.stages import convert

    keras, tf = env.keras, env.tf

    @keras.utils.register_keras_serializable(package="qat_deploy_tests")
    class DiGamma(keras.layers.Layer):
        def call(self, x):
            return tf.math.digamma(x)

    x = keras.Input((8,))
    h = keras.layers.Dense(8, activation="relu", name="d1")(x)
    model = keras.Model(x, keras.layers.Dense(3, name="d2")(DiGamma(name="digamma")(h + 1.0)))
    rep = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    with pytest.raises(ConversionError, match=r"at layer digamma \(DiGamma\)") as err:
        convert.to_tflite(model, Variant.PTQ_INT8, rep)
    assert len(str(err.value).splitlines()) == 1
