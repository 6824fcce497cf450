"""Dense on sequences as SequenceDense (keras/seqdense.py) and int8 SOFTMAX's fixed grid
(fallbacks.FIXED_OUTPUT).

Tolerances: float equivalence within 1e-5 of the output scale (a broadcast matmul instead of
tensordot: another summation order, float32 rounding); int8 as in test_layernorm.py: one op,
the same real value rounded onto the same grid on both sides, so local max <= 1 LSB and mean
<= 0.1 LSB (before: a quarter of the outputs one step off, 0.25 LSB mean, from the int8 bias
ADD QAT did not simulate).
"""

import numpy as np
import pytest

from pipeline.core import keras_env
from pipeline.core.records import Variant
from pipeline.keras import graph, ranges
from pipeline.stages import annotate, convert, parity
from pipeline.tflite.tflite_model import TFLiteModel

T, F = 5, 8


def seq_model(keras):
    L = keras.layers
    x = keras.Input((T, F), name="seq")
    shared = L.Dense(F, activation="relu", name="shared")
    h = shared(shared(x))  # one Dense called twice
    h = L.Dense(16, activation="gelu", name="ff")(h)
    h = L.Dense(T, name="to_t")(h)
    h = L.Softmax(name="attn")(h)
    h = L.Flatten(name="flat")(h)
    return keras.Model(x, L.Dense(3, name="head")(h))  # 2-D: stays a Dense


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:  # non-zero biases: the converter drops a zero bias
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype("float32"))
    return model


def _x(n, seed=1):
    return np.random.default_rng(seed).normal(0, 1.5, (n, T, F)).astype(np.float32)


def test_dense_on_sequences_becomes_sequence_dense(env):
    keras_env.set_seed(0)
    model = _randomize(seq_model(env.keras))
    r = graph.rebuild(model)
    assert r.sequence_dense == ["shared", "ff", "to_t"]
    by = {l.name: l for l in r.model.layers}
    assert [type(by[n]).__name__ for n in ("shared", "ff", "ff_act", "to_t", "head")] == \
        ["SequenceDense", "SequenceDense", "Activation", "SequenceDense", "Dense"]
    assert by["shared"].activation.__name__ == "relu"  # fused, as FULLY_CONNECTED fuses it
    assert by["ff"].activation.__name__ == "linear"  # gelu is its own int8 op
    x = _x(64)
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(r.model.predict(x, verbose=0), want, rtol=0,
                               atol=1e-5 * max(1.0, np.abs(want).max()))


@pytest.mark.slow
def test_one_fully_connected_with_int32_bias_and_softmax_on_its_grid(env):
    keras_env.set_seed(0)
    model = _randomize(seq_model(env.keras))
    qat, cov = annotate.apply(model)
    assert {p.name: p for p in cov.layers}["attn"].own_config
    x = _x(300, seed=2)
    ranges.init_ranges(qat, x[:256])
    probs = env.keras.Model(qat.inputs, qat.get_layer("quant_attn").output).predict(x[:50])
    np.testing.assert_allclose(probs * 256, np.round(probs * 256), atol=1e-3)  # 1/256 grid
    c = convert.convert(Variant.QAT_INT8, qat, representative=x[:100], io="int8")
    assert c.verdict.full_int8, c.verdict.reasons
    sg = TFLiteModel.from_bytes(c.content).main
    ops = [op.opcode for op in sg.operators]
    assert "ADD" not in ops, ops  # no bias left outside a FULLY_CONNECTED
    fcs = [op for op in sg.operators if op.opcode == "FULLY_CONNECTED"]
    assert len(fcs) == 5, ops  # shared x2, ff, to_t, head
    for op in fcs:
        assert len(op.inputs) == 3 and op.inputs[2] >= 0, op
        assert sg.tensors[op.inputs[2]].dtype == "INT32", sg.tensors[op.inputs[2]]
    p = parity.compare_layers(qat, c.content, x[256:])
    rows = {r.layer: r for r in p.rows}
    for n in ("ff", "to_t", "attn"):
        r = rows[n]
        print(f"{n}: local mean {r.local_mean_error_lsb:.4f} max {r.local_max_error_lsb:.2f}")
        assert r.local_max_error_lsb <= 1.0 + 1e-3 and r.local_mean_error_lsb <= 0.1, r
    assert rows["attn"].scale == pytest.approx(1 / 256)
