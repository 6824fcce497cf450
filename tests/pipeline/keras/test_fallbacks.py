"""Layers tfmot refuses get fallbacks; each small model still reaches a full-int8 .tflite that
agrees with its Keras QAT model. Tolerances (the coverage acceptance): top-1 agreement >= 99 % and mean error
<= 2 LSB of the output scale, on seeded random inputs."""

import numpy as np
import pytest

from pipeline.stages import annotate, convert, modelio

from pipeline.keras import fallbacks, graph
from pipeline.keras.plan import LayerStatus

from pipeline.core import keras_env
from pipeline.stages.config import AnnotateConfig
from pipeline.core.errors import ConfigError
from pipeline.core.records import Variant
from pipeline.tflite.runtime import ModelRunner
from tests.conftest import next_auto_name


def _hard_swish(L, h):
    return h * (L.ReLU(6.0)(h + 3.0) * (1.0 / 6.0))  # tf_keras MobileNetV3's TFOpLambda form


def _build(keras, kind):
    L = keras.layers
    if kind == "conv1d":
        inp = keras.Input((32, 4))
        h = L.Conv1D(8, 3, activation="relu")(inp)
        h = L.GlobalAveragePooling1D()(h)
    elif kind == "embedding":
        inp = keras.Input((12,), dtype="int32")
        h = L.Embedding(50, 8)(inp)
        h = L.GlobalAveragePooling1D()(h)
    else:
        inp = keras.Input((16, 16, 3))
        h = L.Conv2D(8, 3, padding="same")(inp)
        if kind == "batchnorm_alone":
            h = L.ReLU()(h)
            h = L.BatchNormalization()(h)  # not after a conv: tfmot refuses it
        elif kind == "rescaling":
            h = L.Rescaling(0.5, offset=0.25)(h)
            h = L.Normalization(mean=0.1, variance=2.0)(h)
        elif kind == "multiply":
            gate = L.Conv2D(8, 1, activation="sigmoid")(h)
            h = L.Multiply()([h, gate])
        elif kind == "hard_swish":
            h = _hard_swish(L, h)
        elif kind == "layernorm":
            h = L.LayerNormalization()(h)
        elif kind == "densenet":  # a small DenseNet: dense block, transition, dense block
            def dense_block(h):
                for _ in range(2):
                    b = L.Conv2D(8, 3, padding="same", use_bias=False)(
                        L.ReLU()(L.BatchNormalization()(h)))
                    h = L.Concatenate()([h, b])
                return h
            h = dense_block(h)
            h = L.Conv2D(8, 1, use_bias=False)(L.ReLU()(L.BatchNormalization()(h)))
            h = dense_block(L.AveragePooling2D(2)(h))
            h = L.ReLU()(L.BatchNormalization()(h))
        elif kind == "activation":
            h = L.Activation("hard_sigmoid")(h)  # not in tfmot's Activation list
        h = L.GlobalAveragePooling2D()(h)
    out = L.Dense(6)(h)
    return keras.Model(inp, out)


def _data(model, n, rng):
    """Seeded random inputs drawn around one random prototype per class (6 classes) and
    their labels. Clustered like real data, so the trained model's logits are well separated
    and top-1 agreement measures quantization error rather than ties: on structureless noise
    some inputs always sit on a decision boundary, where any 1-LSB error flips the argmax."""
    shape = tuple(model.input_shape[1:])
    y = rng.integers(0, 6, n)
    proto = np.random.default_rng(42)
    if model.inputs[0].dtype.name.startswith("int"):
        # each class prefers its own 8 of the 50 token ids
        prefs = proto.permutation(50)[:48].reshape(6, 8)
        x = np.where(rng.random((n, *shape)) < 0.6, prefs[y][:, rng.integers(0, 8, shape[0])],
                     rng.integers(0, 50, (n, *shape)))
        return x.astype(np.int32), y
    # per-class channel offsets, constant over space/time: what global pooling keeps
    centers = proto.normal(0, 1, (6, *[1] * (len(shape) - 1), shape[-1])).astype(np.float32)
    return (centers[y] + rng.normal(0, 1.0, (n, *shape))).astype(np.float32), y


KINDS = {  # kind -> the fallback (or own-QuantizeConfig) class the plan must contain
    # (LayerNormalization becomes its int8 steps, LNMean first: keras/layernorm.py)
    "batchnorm_alone": "BatchNormalization", "rescaling": "Rescaling", "multiply": "Multiply",
    "hard_swish": "Rescaling", "conv1d": "Conv1D", "layernorm": "LNMean",
    "activation": "Activation", "embedding": "Embedding", "densenet": "AveragePooling2D"}
# (Activation("elu") is refused by TFLite's int8 kernels themselves: the converter leaves it
# float whatever QAT does, and the verdict reports it - not a fallback case.)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_fallback_reaches_full_int8_and_agrees(kind, env):
    keras_env.set_seed(0)  # seeds and deterministic ops, as the product runs
    model = _build(env.keras, kind)
    with pytest.raises(Exception):  # tfmot alone refuses every one of these models
        env.tfmot.quantization.keras.quantize_model(model)
    x, y = _data(model, 512, np.random.default_rng(0))
    loss = env.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(env.keras.optimizers.Adam(1e-2), loss)
    model.fit(x, y, batch_size=64, epochs=30, verbose=0)  # the trained model a user brings
    qat, cov = annotate.apply(model)
    special = {p.cls for p in cov.layers if p.status in (LayerStatus.FALLBACK,
                                                         LayerStatus.CALIBRATED) or p.own_config}
    assert KINDS[kind] in special, cov.by_status()
    qat.compile(env.keras.optimizers.Adam(1e-4), loss)
    qat.fit(x, y, batch_size=32, epochs=2, verbose=0)  # QAT: ranges move off their init
    c = convert.convert(Variant.QAT_INT8, qat, representative=x, io="int8")
    assert c.verdict.full_int8, c.verdict.reasons
    xt, _ = _data(model, 256, np.random.default_rng(1))
    runner = ModelRunner(c.content)
    got = runner.run(xt)[0]
    ref = qat.predict(xt, verbose=0)
    agree = np.mean(got.argmax(1) == ref.argmax(1))
    mean_lsb = np.abs(got - ref).mean() / runner.outputs[0].quant.scale
    assert agree >= 0.99 and mean_lsb <= 2.0, (agree, mean_lsb)


def test_qat_model_with_fallbacks_saves_and_reloads(env, tmp_path):
    from pipeline.stages.run import _save_h5

    keras_env.set_seed(0)  # seeds and deterministic ops, as the product runs
    qat, _ = annotate.apply(_build(env.keras, "multiply"))
    path = tmp_path / "qat.h5"
    with env.tfmot.quantization.keras.quantize_scope(fallbacks.custom_objects()):
        _save_h5(qat, path)
    loaded = modelio.load_model(path=str(path))
    assert loaded.is_qat
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), qat.predict(x, verbose=0),
                               atol=1e-6)


def test_rebuild_flattens_nested_models_and_rewrites_tf_ops(env):
    keras, L = env.keras, env.keras.layers
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, _hard_swish(L, L.Conv2D(4, 1)(inner_in)), name="block")
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same")(inp)
    h = inner(h)
    out = L.Dense(3)(L.Flatten()(h))
    model = keras.Model(inp, out)
    r = graph.rebuild(model)
    assert r.flattened == ["block"]
    assert {type(l).__name__ for l in r.model.layers}.isdisjoint({"TFOpLambda", "Functional"})
    assert any(v.startswith("Rescaling") for v in r.replaced.values())
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    # Same function, not the same float program: with TensorFlow's oneDNN rewrites the nested
    # and the flat graph fuse differently (conv+add+relu6 vs separate ops), which reorders the
    # float32 sums (a few ulps, ~1e-7 relative per op, seen 3e-7). 1e-5 of the output's scale
    # bounds that with margin; a wrong rewrite (hard-swish's x+3 or 1/6) is off by O(1).
    a, b = model.predict(x, verbose=0), r.model.predict(x, verbose=0)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_policy_include_exclude_and_typos(env, trained_model):
    _, cov = annotate.prepare(trained_model, AnnotateConfig(exclude=("block3_.*",)))
    status = {p.name: p.status for p in cov.layers}
    assert status["block3_dwconv"] == LayerStatus.EXCLUDED
    assert status["block3_bn"] == LayerStatus.EXCLUDED  # follows its conv
    assert status["block1_conv"] == LayerStatus.QUANTIZED
    _, cov = annotate.prepare(trained_model, AnnotateConfig(include=("Dense",)))
    assert {p.name for p in cov.layers if p.status == LayerStatus.QUANTIZED} == {"logits"}
    with pytest.raises(ConfigError) as err:
        annotate.prepare(trained_model, AnnotateConfig(exclude=("blok3_.*",)))
    assert "matches no layer" in str(err.value) and "'blok3_.*'" in str(err.value)
    with pytest.raises(ConfigError, match="invalid regular expression"):
        AnnotateConfig(exclude=("block3_(",))
    with pytest.raises(ConfigError, match="No layer is left"):
        annotate.prepare(trained_model, AnnotateConfig(include=("Dropout",)))


def test_excluded_layers_stay_unwrapped_and_the_tflite_stays_full_int8(env, trained_model,
                                                                      digits):
    qat, cov = annotate.apply(trained_model, AnnotateConfig(exclude=("block3_pw_.*",)))
    wrapped = {l.layer.name for l in qat.layers if hasattr(l, "layer")}
    assert "block3_pw_conv" not in wrapped and "block1_conv" in wrapped
    c = convert.convert(Variant.QAT_INT8, qat, representative=digits["x_train"][:64])
    assert c.verdict.full_int8, c.verdict.reasons


def test_keep_float_makes_a_mixed_model_the_inspector_reports(env, trained_model, digits):
    from pipeline.tflite import islands

    policy = AnnotateConfig(keep_float=("block3_pw_.*",))
    qat, cov = annotate.apply(trained_model, policy)
    kept = annotate.keep_float_layers(cov)
    assert set(kept) == {"block3_pw_conv", "block3_pw_bn", "block3_pw_relu"}
    wrapped = {l.layer.name for l in qat.layers if hasattr(l, "layer")}
    assert "block3_pw_conv" not in wrapped  # trains in float
    c = convert.convert(Variant.QAT_INT8, qat, representative=digits["x_train"][:64])
    assert c.verdict.full_int8
    mixed, rep = islands.keep_float(c.content, kept)
    from pipeline.tflite.tflite_model import TFLiteModel

    view = TFLiteModel.from_bytes(mixed)
    verdict = view.verdict()
    assert not verdict.full_int8 and islands.only_islands(verdict, rep)
    assert view.op_counts()["DEQUANTIZE"] == 1 and view.op_counts()["QUANTIZE"] == 1
    conv = [op for op in view.main.operators if op.opcode == "CONV_2D"
            and "block3_pw" in view.main.tensors[op.outputs[0]].name]
    assert conv and all(view.main.tensors[i].dtype == "FLOAT32" for i in conv[0].inputs[:2])
    x = digits["x_test"]
    a, b = ModelRunner(c.content).run(x)[0], ModelRunner(mixed).run(x)[0]
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.99  # the same model, one layer in float
    with pytest.raises(Exception, match="No op of the .tflite"):
        islands.keep_float(c.content, ["no_such_layer"])


def test_annotate_when_a_layer_has_the_name_tfmot_gives_its_new_conv(env):
    # tfmot splits a SeparableConv2D into a DepthwiseConv2D and an *unnamed* Conv2D and
    # rebuilds the model by layer name; a model loaded from a config (or translated from
    # Keras 3, whose Xception has unnamed conv2d, conv2d_1, ...) does not advance tf_keras'
    # automatic-name counter, so the new conv repeated an existing name: Keras 3 Xception's
    # quantize_apply never returned, this model failed with "Exception encountered when
    # calling layer conv2d".
    keras, L = env.keras, env.keras.layers
    taken = next_auto_name(keras, "Conv2D")
    inp = keras.Input((16, 16, 3))
    h = L.Conv2D(8, 3, padding="same", name=taken)(inp)
    h = L.SeparableConv2D(8, 3, padding="same", use_bias=False)(h)
    h = L.ReLU()(L.BatchNormalization()(h))
    out = L.Dense(6)(L.GlobalAveragePooling2D()(h))
    qat, cov = annotate.apply(keras.Model(inp, out))
    names = [layer.name for layer in qat.layers]
    assert len(names) == len(set(names)) and f"quant_{taken}" in names, names
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    assert qat.predict(x, verbose=0).shape == (4, 6)


def test_batchnorm_after_a_conv_is_folded_in_a_rebuilt_model(env):
    # graph.rebuild reuses the source model's layers, so the conv has nodes in both models:
    # only the rebuilt model's own must count, or the BatchNormalization would get a
    # fallback config and tfmot would not fold it (tf_keras MobileNetV3: every BN).
    keras, L = env.keras, env.keras.layers
    inp = keras.Input((8, 8, 3))
    h = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inp))
    side = L.Conv2D(4, 1, name="shared")(h)  # feeds two layers: its BN cannot fold
    h = L.Add(name="add")([L.BatchNormalization(name="bn2")(side), side])
    model = keras.Model(inp, L.Dense(3)(L.Flatten()(_hard_swish(L, h))))
    rebuilt, cov = annotate.prepare(model)
    assert rebuilt is not model and graph.rebuild(model).replaced
    plans = {p.name: p for p in cov.layers}
    assert plans["bn"].status == LayerStatus.FOLDED and plans["bn"].inbound == ("conv",)
    assert plans["bn2"].status == LayerStatus.FALLBACK
    assert plans["add"].inbound == ("bn2", "shared")
