"""LayerNormalization rewritten into one fake-quantized layer per int8 op (keras/layernorm.py).

Tolerances:
- float equivalence: 1e-5 of the output scale, as every graph rewrite (docs/architecture.md):
  mean and variance are summed in another order than Keras' fused kernel (float32 rounding);
- int8: each step is one int8 op whose output Keras QAT and the .tflite round onto the same
  grid from the same real value (the .tflite's own input tensors, parity_local), so they
  differ by at most one step, and only where a value sits within the kernels' fixed-point
  error of a rounding boundary: local max <= 1 LSB, mean <= 0.1 LSB.
"""

import numpy as np
import pytest

from pipeline.core import keras_env
from pipeline.core.records import Variant
from pipeline.keras import graph, ranges
from pipeline.keras.plan import LayerStatus
from pipeline.stages import annotate, convert, parity
from pipeline.stages.config import AnnotateConfig

T, F = 6, 12


def ln_model(keras, **ln_kwargs):
    L = keras.layers
    x = keras.Input((T, F), name="seq")
    h = L.Dense(F, name="proj")(x)
    h = L.LayerNormalization(name="ln", **ln_kwargs)(h)
    return keras.Model(x, L.Dense(3, name="head")(L.Flatten(name="flat")(h)))


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.5, 0.7, tuple(w.shape)).astype("float32"))
    return model


def _x(n, seed=1):
    return np.random.default_rng(seed).normal(0, 2, (n, T, F)).astype(np.float32)


@pytest.mark.parametrize("kwargs, parts", [
    ({}, 9), ({"epsilon": 1e-5}, 9), ({"center": False}, 8), ({"scale": False}, 8),
    ({"center": False, "scale": False}, 7), ({"axis": 2}, 9)])
def test_rewrite_computes_the_same_function(env, kwargs, parts):
    model = _randomize(ln_model(env.keras, **kwargs))
    r = graph.rebuild(model, layernorm=True)
    [route] = r.layernorm
    assert route.name == "ln" and route.cls == "LayerNormalization" and len(route.parts) == parts
    assert "ln" not in [l.name for l in r.model.layers]
    x = _x(64)
    want = model.predict(x, verbose=0)
    got = r.model.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))
    inner = env.keras.Model(r.model.inputs, r.model.get_layer(route.parts[-1]).output)
    ref = env.keras.Model(model.inputs, model.get_layer("ln").output)
    np.testing.assert_allclose(inner.predict(x, verbose=0), ref.predict(x, verbose=0),
                               rtol=0, atol=1e-5 * max(1.0, np.abs(ref.predict(x)).max()))


def test_only_the_qat_path_and_the_last_axis_are_rewritten(env):
    keras = env.keras
    model = _randomize(ln_model(keras))
    assert graph.rebuild(model).layernorm == []  # the float / PTQ graph keeps the layer
    x = keras.Input((T, F))
    y = keras.layers.LayerNormalization(axis=1, name="ln_time")(x)
    r = graph.rebuild(keras.Model(x, y), layernorm=True)
    assert r.layernorm == []
    _, cov = annotate.prepare(keras.Model(x, y))
    ln = {p.name: p for p in cov.layers}["ln_time"]
    assert ln.own_config and not ln.parts and "calibrated from the representative" in ln.detail


def test_policy_naming_the_layernorm_applies_to_its_parts(env):
    model = ln_model(env.keras)
    _, cov = annotate.prepare(model, AnnotateConfig(keep_float=["ln"]))
    by = {p.name: p for p in cov.layers}
    assert by["ln"].status is LayerStatus.KEEP_FLOAT
    assert set(annotate.keep_float_layers(cov)) == set(by["ln"].parts)


@pytest.mark.slow
def test_each_int8_step_matches_keras_qat_within_one_step(env):
    keras_env.set_seed(0)
    model = _randomize(ln_model(env.keras), seed=2)
    qat, _ = annotate.apply(model)
    x = _x(300, seed=3)
    ranges.init_ranges(qat, x[:256])
    c = convert.convert(Variant.QAT_INT8, qat, representative=x[:100], io="int8")
    assert c.verdict.full_int8, c.verdict.reasons
    p = parity.compare_layers(qat, c.content, x[256:])
    rows = {r.layer: r for r in p.rows}
    steps = [n for n in rows if n.startswith("ln_")]
    assert len(steps) == 9, sorted(rows)
    for n in steps:
        r = rows[n]
        assert r.status == "compared", r
        print(f"{n}: local mean {r.local_mean_error_lsb:.4f} max {r.local_max_error_lsb:.2f}"
              f" LSB, drift mean {r.mean_error_lsb:.3f}")
        assert r.local_max_error_lsb <= 1.0 + 1e-3, r
        assert r.local_mean_error_lsb <= 0.1, r
