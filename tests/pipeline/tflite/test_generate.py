"""Text generation from a .tflite LM (pipeline/tflite/generate.py): a tiny char_lm trained on
a repeated sentence, converted to float32 and int8 with the TensorFlow converter."""

from __future__ import annotations

import numpy as np
import pytest

from models import char_lm
from pipeline.core import keras_env
from pipeline.core.errors import ModelFileError, UsageError
from pipeline.tflite import generate as gen
from pipeline.tflite.runtime import ModelRunner

TEXT = "hello world, said the quick brown fox. "
TABLE = ["<other>"] + sorted(set(TEXT))
W = 8


def _windows(n):
    ids = np.array([TABLE.index(c) for c in TEXT * (n // len(TEXT) + 2)], np.int32)
    starts = np.arange(n) % len(TEXT)
    x = np.stack([ids[s:s + W] for s in starts])
    y = np.stack([ids[s + 1:s + W + 1] for s in starts])
    return x, np.tile(np.arange(W, dtype=np.int32), (n, 1)), y


@pytest.fixture(scope="module")
def lm():
    """(keras model, {variant: .tflite bytes}) trained until it recites TEXT."""
    env = keras_env.load()
    tf, keras = env.tf, env.keras
    keras_env.set_seed(0)
    model = char_lm.build(keras, window=W, vocab=len(TABLE), d=32, heads=2, blocks=1, ff=64)
    x, pos, y = _windows(len(TEXT) * 8)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit([x, pos], y, epochs=60, batch_size=32, verbose=0)
    out = {}
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    out["float32"] = conv.convert()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[i:i + 1], pos[i:i + 1]] for i in range(64))
    conv.inference_output_type = tf.int8
    out["int8"] = conv.convert()
    return model, out


def _keras_greedy(model, prompt, steps):
    """The same decoding written against the Keras model, one window per step."""
    ids = [TABLE.index(c) for c in prompt]
    pos = np.arange(W, dtype=np.int32)[None]
    for _ in range(steps):
        ctx = ids[-W:]
        window = np.zeros((1, W), np.int32)
        window[0, :len(ctx)] = ctx
        ids.append(int(np.argmax(model([window, pos]).numpy()[0, len(ctx) - 1])))
    return "".join(TABLE[i] for i in ids[len(prompt):])


def _expected(prompt, steps):
    start = TEXT.index(prompt) + len(prompt)
    return (TEXT * 4)[start:start + steps]


@pytest.mark.slow
def test_float_tflite_greedy_equals_keras_and_recites_the_text(lm):
    model, variants = lm
    for prompt in ("h", "the quick b"):  # shorter and longer than the window
        g = gen.generate(variants["float32"], prompt, TABLE, steps=30)
        assert g.text == _keras_greedy(model, prompt, 30) == _expected(prompt, 30)
        assert g.decoding == "greedy" and g.window == W and len(g.ids) == 30
        assert g.ms_per_token > 0 and g.to_dict()["prompt"] == prompt


def _raw_int8_greedy(content, prompt, steps):
    """Greedy decoding written against the raw LiteRT interpreter: inputs set by name, the
    int8 logits dequantized here as scale * (q - zero_point)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    it.allocate_tensors()
    by_name = {d["name"]: d["index"] for d in it.get_input_details()}
    out = it.get_output_details()[0]
    scale, zp = out["quantization"]
    ids = [TABLE.index(c) for c in prompt]
    for _ in range(steps):
        ctx = ids[-W:]
        window = np.zeros((1, W), np.int32)
        window[0, :len(ctx)] = ctx
        it.set_tensor(by_name["serving_default_tokens:0"], window)
        it.set_tensor(by_name["serving_default_positions:0"], np.arange(W, dtype=np.int32)[None])
        it.invoke()
        q = it.get_tensor(out["index"])[0, len(ctx) - 1].astype(np.float64)
        ids.append(int(np.argmax(scale * (q - zp))))
    return "".join(TABLE[i] for i in ids[len(prompt):])


@pytest.mark.slow
def test_int8_tflite_logits_are_dequantized_with_their_own_parameters(lm):
    """The int8 output path: generate() reads the int8 logits as an independent reader does
    (the text's quality is the quantization's business and is not asserted here)."""
    _, variants = lm
    runner = ModelRunner(variants["int8"])
    assert runner.outputs[0].dtype == np.int8 and runner.outputs[0].quant is not None
    assert {s.dtype for s in runner.inputs} == {np.dtype(np.int32)}
    for prompt in ("said", "the quick brown "):
        g = gen.generate(variants["int8"], prompt, TABLE, steps=20)
        assert g.text == _raw_int8_greedy(variants["int8"], prompt, 20)


@pytest.mark.slow
def test_sampling_is_seeded_and_top_1_is_greedy(lm):
    _, variants = lm
    model = variants["float32"]
    a = gen.generate(model, "fox", TABLE, steps=40, temperature=3.0, seed=1)
    b = gen.generate(model, "fox", TABLE, steps=40, temperature=3.0, seed=1)
    c = gen.generate(model, "fox", TABLE, steps=40, temperature=3.0, seed=2)
    assert a.text == b.text and a.text != c.text  # hot enough to leave the memorised text
    assert "temperature 3, top_k all, seed 1" in a.decoding
    greedy = gen.generate(model, "fox", TABLE, steps=40)
    assert gen.generate(model, "fox", TABLE, steps=40, temperature=3.0, top_k=1,
                        seed=5).text == greedy.text


@pytest.mark.slow
def test_isolated_child_generates_the_same(lm, tmp_path):
    _, variants = lm
    path = tmp_path / "lm_int8.tflite"
    path.write_bytes(variants["int8"])
    here = gen.generate(path, "brown", TABLE, steps=12)
    child = gen.generate(path, "brown", TABLE, steps=12, isolated=True)
    assert child.text == here.text and child.ms_per_token is None


def test_vocabulary_encodes_unknown_characters_as_the_unknown_id():
    v = gen.Vocabulary(TABLE, 0)
    assert v.encode("hé") == [TABLE.index("h"), 0] and v.decode(v.encode("hé")) == "h\ufffd"
    with pytest.raises(UsageError, match="unknown id"):
        gen.Vocabulary(TABLE, len(TABLE))


def test_input_names_are_matched_after_conversion():
    assert gen.input_order(["serving_default_positions:0", "serving_default_tokens:0"],
                           "m") == {"tokens": 1, "positions": 0}
    assert gen.input_order(["ids"], "m") == {"tokens": 0, "positions": None}
    with pytest.raises(ModelFileError, match="not a language model"):
        gen.input_order(["image", "other"], "m")


@pytest.mark.slow
@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": ""}, "prompt is empty"), ({"steps": 0}, "steps must be"),
    ({"temperature": -1.0}, "temperature"), ({"top_k": -2}, "top_k"),
    ({"vocab": TABLE[:-1]}, "does not match the model's output"),
])
def test_bad_arguments_are_one_line_errors(lm, kwargs, match):
    _, variants = lm
    args = {"prompt": "he", "vocab": TABLE, **kwargs}
    with pytest.raises(UsageError, match=match) as err:
        gen.generate(variants["float32"], args.pop("prompt"), args.pop("vocab"), **args)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_classifier_is_not_a_language_model():
    env = keras_env.load()
    keras = env.keras
    inp = keras.Input((W,), dtype="int32", name="tokens")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(len(TABLE), 4)(inp))
    model = keras.Model(inp, keras.layers.Dense(3)(x))
    content = env.tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(ModelFileError, match="not a per-position language model"):
        gen.generate(content, "x", TABLE, steps=1)
