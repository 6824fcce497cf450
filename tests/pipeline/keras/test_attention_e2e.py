"""Transformers through QAT to full-int8, end to end (slow: they train and convert).

- A tf_keras transformer classifier on scikit-learn's digits (each image's 8 rows are 8 tokens
  of 8 pixels; 2 pre-norm blocks, d=32, 2 heads, gelu and swish feed-forwards, the positional
  embedding as EinsumDense's per-position bias) goes annotate → ranges → QAT fine-tune →
  convert: the .tflite is full-int8 with int8 FULLY_CONNECTED, BATCH_MATMUL and SOFTMAX, and
  its top-1 agrees with the Keras QAT model on >= 99 % of the test split (the target).
- Layer parity matches the attention's inner tensors (projections, scores, softmax, context,
  output) to TFLite tensors; each within 1 LSB mean of its own scale (the verifier's default).
- The zoo LM's shape (tokens + positions, causal blocks, per-token logits) trained briefly on
  a generated sequence task converts to full-int8 and agrees per token with Keras QAT on
  >= 99 % of the tokens whose successor the context determines, mean logit error <= 2 LSB.
"""

import numpy as np
import pytest

from pipeline.core import keras_env
from pipeline.core.records import Variant
from pipeline.keras import ranges
from pipeline.stages import annotate, convert, finetune, parity
from pipeline.tflite.runtime import ModelRunner
from pipeline.tflite.tflite_model import TFLiteModel
from tests.pipeline.keras.test_attention import attention_model, block, inputs_for, lm_model

pytestmark = pytest.mark.slow
INT8_OPS = {"FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX"}


def digits_transformer(keras, d: int = 32, heads: int = 2, blocks: int = 2):
    L = keras.layers
    x = keras.Input((8, 8), name="rows")
    # token projection + learned positional embedding (the per-position bias)
    h = L.EinsumDense("btf,fd->btd", output_shape=(8, d), bias_axes="td", name="embed")(x)
    for i in range(blocks):
        h = block(keras, h, name=f"b{i}", heads=heads, act=("gelu", "swish")[i % 2])
    h = L.GlobalAveragePooling1D(name="pool")(L.LayerNormalization(name="ln_f")(h))
    return keras.Model(x, L.Dense(10, name="head")(h), name="digits_transformer")


def _qat(env, model, x, y, epochs: int = 2):
    """annotate → activation ranges from data → QAT fine-tune, as `qat run` does."""
    qat, cov = annotate.apply(model)
    ranges.init_ranges(qat, x[:256] if not isinstance(x, list) else [a[:256] for a in x])
    qat.compile(env.keras.optimizers.Adam(1e-4),
                env.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return qat, cov


def _int8_ops(content: bytes) -> dict[str, set[str]]:
    """Op name -> dtypes of its non-constant outputs."""
    view = TFLiteModel.from_bytes(content)
    sg = view.main
    out: dict[str, set[str]] = {}
    for op in sg.operators:
        out.setdefault(op.opcode, set()).update(sg.tensors[i].dtype for i in op.outputs)
    return out


@pytest.fixture(scope="module")
def classifier(env, digits):
    keras_env.set_seed(0)
    rows = lambda a: a.reshape(len(a), 8, 8)
    x, y = rows(digits["x_train"]), digits["y_train"]
    model = digits_transformer(env.keras)
    finetune.train_float(model, x[:1200], y[:1200], x[1200:], y[1200:], epochs=20,
                         learning_rate=3e-3, batch_size=32, from_logits=True, verbose=0)
    qat, cov = _qat(env, model, x, y)
    c = convert.convert(Variant.QAT_INT8, qat, representative=x[:200], io="int8")
    return model, qat, cov, c, rows(digits["x_test"]), digits["y_test"]


def test_digits_transformer_is_full_int8_and_agrees(classifier):
    model, qat, cov, c, xt, yt = classifier
    assert c.verdict.full_int8, c.verdict.reasons
    ops = _int8_ops(c.content)
    assert INT8_OPS <= set(ops), sorted(ops)
    for name in INT8_OPS:
        assert ops[name] == {"INT8"}, (name, ops[name])
    got = ModelRunner(c.content).run(xt)[0]
    ref = qat.predict(xt, verbose=0)
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    acc = {"float": float(np.mean(model.predict(xt, verbose=0).argmax(1) == yt)),
           "qat": float(np.mean(ref.argmax(1) == yt)),
           "int8": float(np.mean(got.argmax(1) == yt))}
    print(f"\ndigits transformer: agreement {agree:.4f}, accuracy {acc}, "
          f"size {c.size} B")
    assert agree >= 0.99, (agree, acc)
    assert acc["float"] > 0.9, acc  # trained, so agreement is measured on a real model
    assert {p.status.value for p in cov.counted} <= {"quantized", "passthrough", "calibrated",
                                                     "input"}


def test_layer_parity_matches_attention_inner_tensors(classifier):
    """Every part of both attentions is matched to its TFLite tensor. Each row compares the
    .tflite with Keras QAT on the same input, so upstream int8 error is carried along and
    grows with depth (the int8 LayerNormalization chain of MEAN / SQUARED_DIFFERENCE /
    RSQRT adds most): the first block's attention, with one LayerNormalization before it,
    stays within the verifier's 1 LSB mean."""
    _, qat, _, c, xt, _ = classifier
    p = parity.compare_layers(qat, c.content, xt[:100])
    rows = {r.layer: r for r in p.rows}
    for b in ("b0", "b1"):
        for part in ("q", "k", "v", "scores", "softmax", "context", "output"):
            r = rows[f"{b}_mha_{part}"]
            assert r.status == "compared", r
            assert f"quant_{b}_mha_{part}/" in r.tensor, r
            print(f"{r.layer}: mean {r.mean_error_lsb:.3f} LSB, max {r.max_error_lsb:.2f} LSB "
                  f"({r.tensor.split(';')[0]})")
            if b == "b0":
                assert r.mean_error_lsb <= p.threshold_lsb, r
    assert rows["b0_mha_scores"].shape == (2, 8, 8)  # (heads, T, T)
    assert rows["b0_mha_softmax"].scale == 1 / 256  # int8 SOFTMAX's fixed output scale
    assert not p.unmatched_tensors, p.unmatched_tensors[:5]
    print(f"first divergent layer (mean > {p.threshold_lsb} LSB): {p.first_divergent}")


def _sequence_task(n: int, vocab: int, t: int, seed: int):
    """Arithmetic sequences mod ``vocab`` with a per-sequence step in {1, 2, 3}: the next
    token follows from the last two, so the model must attend to the past."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, vocab, (n, 1))
    step = rng.integers(1, 4, (n, 1))
    seq = (start + step * np.arange(t + 1)) % vocab
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (n, t)).copy()
    return [seq[:, :t].astype(np.int32), pos], seq[:, 1:].astype(np.int32)


def _to_tflite_multi(env, model, xs):
    """QAT int8 conversion of a model with several inputs (token ids stay int32)."""
    tf = env.tf
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    names = [t.name.split(":")[0] for t in model.inputs]  # by name: the converter's order
    conv.representative_dataset = lambda: ({n: a[i: i + 1] for n, a in zip(names, xs)}
                                           for i in range(len(xs[0])))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def test_zoo_lm_shape_converts_full_int8_and_agrees_per_token(env):
    keras_env.set_seed(0)
    vocab, t = 16, 8
    model = lm_model(env.keras, vocab=vocab, t=t, d=32, blocks=2)
    x, y = _sequence_task(1200, vocab, t, 0)
    model.compile(env.keras.optimizers.Adam(3e-3),
                  env.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=8, verbose=0)
    qat, cov = _qat(env, model, x, y, epochs=1)
    assert {p.name: p for p in cov.layers}["b0_mha"].status.value == "quantized"
    content = _to_tflite_multi(env, qat, [a[:200] for a in x])
    verdict = TFLiteModel.from_bytes(content).verdict()
    assert verdict.full_int8, verdict.reasons
    ops = _int8_ops(content)
    for name in INT8_OPS:
        assert ops.get(name) == {"INT8"}, (name, sorted(ops))
    xt, yt = _sequence_task(300, vocab, t, 1)
    runner = ModelRunner(content)
    order = [i.name for i in runner.inputs]
    feed = [xt[0] if "tokens" in n else xt[1] for n in order]
    got = runner.run(feed)[0]
    ref = qat.predict(xt, verbose=0)
    assert got.shape == (300, t, vocab)
    same = got.argmax(-1) == ref.argmax(-1)
    # The first token's successor is undetermined (three steps equally likely): near-ties
    # there flip on any 1-LSB difference, so agreement is measured from the second token on,
    # where the context determines the next token.
    agree = float(np.mean(same[:, 1:]))
    mean_lsb = float(np.abs(got - ref).mean() / runner.outputs[0].quant.scale)
    acc = float(np.mean(ref.argmax(-1)[:, 1:] == yt[:, 1:]))
    print(f"\ntiny LM: per-token agreement {agree:.4f} (t >= 1; {np.mean(same):.4f} with t = 0), "
          f"mean logit error {mean_lsb:.2f} LSB, QAT token accuracy (t >= 1) {acc:.3f}")
    assert agree >= 0.99, agree
    assert mean_lsb <= 2.0, mean_lsb  # the fallback tests' bound


def test_attention_variants_convert_full_int8(env):
    """Causal + float attention mask, cross-attention and an integer attention mask, one block
    each in one model: the QAT model (ranges from data) converts to full-int8 with int8
    BATCH_MATMUL and SOFTMAX, and its outputs stay within 2 LSB mean of Keras QAT (the
    fallback tests' bound)."""
    keras_env.set_seed(0)
    model = attention_model(env.keras, "combo")
    xs = inputs_for(model, 256)
    qat, _ = annotate.apply(model)
    ranges.init_ranges(qat, xs)
    content = _to_tflite_multi(env, qat, [a[:100] for a in xs])
    verdict = TFLiteModel.from_bytes(content).verdict()
    assert verdict.full_int8, verdict.reasons
    ops = _int8_ops(content)
    for name in INT8_OPS:
        assert ops.get(name) == {"INT8"}, (name, sorted(ops))
    xt = inputs_for(model, 128, seed=1)
    runner = ModelRunner(content)
    by_name = {t.name.split(":")[0]: a for t, a in zip(model.inputs, xt)}
    feed = [by_name[i.name.split(":")[0].removeprefix("serving_default_")]
            for i in runner.inputs]
    got = runner.run(feed)[0]
    ref = qat.predict(xt, verbose=0)
    mean_lsb = float(np.abs(got - ref).mean() / runner.outputs[0].quant.scale)
    print(f"\nattention variants: mean error {mean_lsb:.2f} LSB")
    assert mean_lsb <= 2.0, mean_lsb
