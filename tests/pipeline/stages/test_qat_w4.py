"""QAT with 4-bit weights (qat_w4a8): trained by tfmot's n-bit scheme, written by the TFLite
converter as INT4 tensors. The integers in the file are compared with the QAT model's own grid
exactly: both are round(w / s) of weights that QAT already put on that grid (w_fq / s is an
integer up to float32 rounding, far from a .5 tie), so no tolerance is needed."""

import math

import numpy as np
import pytest

from pipeline.core.errors import ConfigError, ConversionError
from pipeline.core.records import Variant
from pipeline.stages import annotate, config, convert, verify
from tests import tflite_craft


def _weight_tensors(content: bytes) -> dict[str, tuple[np.ndarray, int, int]]:
    """name -> (signed integers in the tensor's shape, stored bytes, bits) of every INT4 and
    constant INT8 tensor; INT4 unpacked two a byte, low nibble first (LiteRT's layout). Read
    with LiteRT's own generated schema rather than our reader."""
    from ai_edge_litert import schema_py_generated as s

    m = tflite_craft.unpack(content)
    out = {}
    for t in m.subgraphs[0].tensors:
        data = m.buffers[t.buffer].data
        if t.type not in (s.TensorType.INT4, s.TensorType.INT8) or data is None or \
                not len(data):
            continue
        raw = np.frombuffer(bytes(data), np.uint8)
        n = int(np.prod(t.shape))
        if t.type == s.TensorType.INT8:
            out[t.name.decode()] = (raw.view(np.int8).reshape(t.shape), len(raw), 8)
            continue
        nibbles = np.stack([raw & 0xF, raw >> 4], 1).reshape(-1).astype(np.int8)
        v = np.where(nibbles > 7, nibbles - 16, nibbles)[:n]
        out[t.name.decode()] = (v.reshape(t.shape), len(raw), 4)
    return out


def _qat_integers(env, layer) -> tuple[np.ndarray, int]:
    """(the QAT model's integer weights of one wrapped layer in TFLite's layout, their bits):
    the kernel fake-quantized with the quantizer's stored range (what inference and the
    converter see), divided by its step. Symmetric narrow range: step = max / (2^(b-1) - 1)."""
    tf = env.tf
    (w, quantizer, qvars), = [v for v in layer._weight_vars if "kernel" in v[0].name]
    bits = quantizer.num_bits
    lo, hi = qvars["min_var"].numpy(), qvars["max_var"].numpy()
    fq = (tf.quantization.fake_quant_with_min_max_vars_per_channel if np.ndim(hi) else
          tf.quantization.fake_quant_with_min_max_vars)(
        w, lo, hi, num_bits=bits, narrow_range=True).numpy()
    q = np.round(fq / (hi / (2 ** (bits - 1) - 1))).astype(np.int8)
    kind = type(layer.layer).__name__
    if kind in ("Conv2D", "DepthwiseConv2D"):  # (kh, kw, in, out|1) -> (out|1, kh, kw, in)
        return q.transpose(3, 0, 1, 2), bits
    assert kind == "Dense", kind  # (in, out) -> (out, in)
    return q.T, bits


def _bn_sign(model, layer) -> np.ndarray | float:
    """The converter folds a BatchNormalization after the conv into the weights' per-channel
    scale; a negative gamma flips that channel's integers."""
    after = [n.outbound_layer for n in layer._outbound_nodes
             if n.outbound_layer in model.layers]
    bn = [getattr(l, "layer", l) for l in after
          if type(getattr(l, "layer", l)).__name__ == "BatchNormalization"]
    return np.sign(bn[0].gamma.numpy()) if bn else 1.0


def test_qat_w4a8_file_holds_the_qat_grid_as_int4(env, qat_w4_model, tflite_variants):
    tensors = _weight_tensors(tflite_variants[Variant.QAT_W4A8].content)
    wrapped = [l for l in qat_w4_model.layers if getattr(l, "_weight_vars", None)]
    assert {type(l.layer).__name__ for l in wrapped} == {"Conv2D", "DepthwiseConv2D", "Dense"}
    assert len(tensors) == len(wrapped)  # every conv / depthwise / dense kernel, nothing else
    for layer in wrapped:
        (name,) = [n for n in tensors if f"/{layer.name}/" in n]
        got, stored, bits = tensors[name]
        want, qat_bits = _qat_integers(env, layer)
        kind = type(layer.layer).__name__
        # 4-bit conv / dense; depthwise keeps 8 bits (annotate.W4_INT8_LAYERS, as aeq_w4a8)
        assert qat_bits == bits == (8 if kind == "DepthwiseConv2D" else 4), layer.name
        sign = _bn_sign(qat_w4_model, layer)
        if np.ndim(sign):  # per output channel: TFLite's axis 0 (conv), -1 (depthwise)
            shape = [1] * want.ndim
            shape[0 if kind == "Conv2D" else -1] = -1
            want = want * sign.reshape(shape).astype(np.int8)
        assert got.shape == want.shape, layer.name
        np.testing.assert_array_equal(got, want, err_msg=layer.name)
        assert stored == (math.ceil(got.size / 2) if bits == 4 else got.size), layer.name
        assert np.abs(got).max() <= 2 ** (bits - 1) - 1  # narrow range: -7..7 at 4 bits


def test_qat_w4a8_is_smaller_full_int8_and_follows_keras_qat(qat_w4_model, tflite_variants,
                                                           digits):
    w4, w8 = tflite_variants[Variant.QAT_W4A8], tflite_variants[Variant.QAT_INT8]
    assert w4.verdict.full_int8, w4.verdict.reasons
    sizes, sizes8 = w4.model.size_breakdown(), w8.model.size_breakdown()
    # conv / dense weights in half their int8 bytes (packed nibbles); depthwise stays int8
    depthwise = sum(t.size for n, t in ((n, v[0]) for n, v in _weight_tensors(
        w4.content).items()) if "dwconv" in n)
    assert sizes["int8_weights"] == depthwise
    assert sizes["int4_weights"] <= math.ceil((sizes8["int8_weights"] - depthwise) / 2) + 8
    assert w4.size < w8.size
    x, y = digits["x_test"], digits["y_test"]
    ref = verify.score_keras("keras_qat", qat_w4_model, x, y)
    cand = verify.score_tflite("qat_w4a8", w4.content, x, y)
    a = verify.compare(ref, cand)
    # the int4 weights are the QAT model's own (test above): only the int8 activation
    # rounding differs, as for qat_int8 (test_convert: >= 0.99, <= 1 LSB mean)
    assert a.top1_agreement >= 0.99
    assert a.mean_error_lsb <= 1.0


def test_weight_bits_name_the_qat_variant(qat_model, qat_w4_model):
    assert annotate.weight_bits_of(qat_w4_model) == 4
    assert annotate.weight_bits_of(qat_model) == 8


def test_a_qat_model_converts_only_under_its_own_weight_bits(qat_model, qat_w4_model, digits):
    rep = digits["x_train"][:20]
    with pytest.raises(ConversionError, match="Convert this 4-bit QAT model as qat_w4a8"):
        convert.convert(Variant.QAT_INT8, qat_w4_model, representative=rep)
    with pytest.raises(ConversionError, match="no INT4 weight tensor"):
        convert.convert(Variant.QAT_W4A8, qat_model, representative=rep)


def test_one_qat_variant_per_run():
    with pytest.raises(ConfigError, match="more than one QAT variant"):
        config.ConvertConfig(variants=("float32", "qat_int8", "qat_w4a8"))
    with pytest.raises(ConfigError, match="must be 8 or 4"):
        annotate.scheme(2)


def test_variant_precisions_pair_qat_with_its_own_ptq():
    assert Variant.QAT_W4A8.precision == Variant.AEQ_W4A8.precision == "w4a8"
    assert Variant.ptq_like(list(Variant), Variant.QAT_W4A8) == [Variant.AEQ_W4A8,
                                                                 Variant.AEQ_W4A8_MSE]
    assert Variant.ptq_like(list(Variant), Variant.QAT_INT8) == [Variant.PTQ_INT8,
                                                                 Variant.AEQ_INT8]
    assert Variant.PTQ_16X8.precision == "w8a16"  # compared with no QAT variant
    assert Variant.AEQ_W4AFP32.precision == Variant.AEQ_W4AFP32_MSE.precision == "w4afp32"
    assert Variant.AEQ_W4AFP32.is_peer and Variant.AEQ_W4AFP32.is_weight_only
    assert Variant.qat_of([Variant.FLOAT32, Variant.QAT_W4A8]) is Variant.QAT_W4A8


def test_qat_convert_names_a_4bit_qat_model_qat_w4a8(qat_w4_model, digits_npz, tmp_path):
    from pipeline.cli.app import main, parse_args
    from pipeline.stages.run import _save_h5

    path = tmp_path / "qat_w4.h5"
    q = __import__("pipeline.core.keras_env", fromlist=["load"]).load().tfmot
    with q.quantization.keras.quantize_scope():
        _save_h5(qat_w4_model, path)
    out = tmp_path / "out"
    assert main(parse_args(["convert", str(path), "--data", str(digits_npz), "--output",
                            str(out), "--representative-samples", "20"])) == 0
    assert [p.name for p in out.iterdir()] == ["qat_w4a8.tflite"]
    assert main(parse_args(["convert", str(path), "--data", str(digits_npz), "--output",
                            str(tmp_path / "o2"), "--variants", "qat_int8"])) == 2


def test_qat_run_at_4_bits_compares_with_the_4bit_ptq(w4_run):
    """`qat run` with qat_w4a8: one 4-bit QAT model, gated and layer-checked, and compared
    with the best PTQ of its precision (aeq_w4a8 / aeq_w4a8_mse when ai-edge-quantizer is
    installed)."""
    import json

    from pipeline.stages import peers

    code, run = w4_run
    assert code == 0
    rep = json.loads((run / "report.json").read_text())
    assert sorted(p.name for p in run.glob("*.tflite")) == sorted(
        ["float32.tflite", "ptq_int8.tflite", "qat_w4a8.tflite"] +
        (["aeq_int8.tflite", "aeq_w4a8.tflite", "aeq_w4a8_mse.tflite", "aeq_w4afp32.tflite",
          "aeq_w4afp32_mse.tflite"]
         if peers.available() else []))
    gates_ = {g["name"] for g in rep["gates"]}
    assert {"max_accuracy_drop_pp", "min_agreement", "full_int8[qat_w4a8]"} <= gates_
    assert "full_int8[aeq_w4a8]" not in gates_  # a peer: compared, not gated on
    cmp = rep["qat_vs_best_ptq"]
    if peers.available():
        assert cmp["qat"] == "qat_w4a8" and cmp["precision"] == "w4a8"
        assert set(cmp["ptq_accuracies"]) == {"aeq_w4a8", "aeq_w4a8_mse"}
        # the weight-only peers: in the table, marked, and not compared (float activations)
        md = (run / "report.md").read_text()
        assert "| `aeq_w4afp32.tflite` |" in md and md.count("| no: weight-only |") == 2
        assert cmp["best_ptq"] == max(cmp["ptq_accuracies"], key=cmp["ptq_accuracies"].get)
    else:  # no PTQ at 4 bits to compare with
        assert cmp is None
    assert rep["layer_parity"]["first_divergent"] is None
    assert "Keras QAT vs qat_w4a8.tflite" in (run / "report.md").read_text()


def test_int8_weights_keeps_the_named_layers_8bit_in_a_4bit_model(env, trained_model, digits):
    from pipeline.keras import ranges

    policy = config.AnnotateConfig(int8_weights=("logits", "block1_.*"))
    model, coverage = annotate.apply(trained_model, policy, weight_bits=4)
    assert any("block1_conv, logits" in n for n in coverage.notes)
    ranges.init_ranges(model, digits["x_train"][:64])
    c = convert.convert(Variant.QAT_W4A8, model, representative=digits["x_train"][:20])
    bits = {next(k for k in ("block1_conv", "block2_pw", "block3_pw", "dwconv", "logits")
                 if k in n): b for n, (_, _, b) in _weight_tensors(c.content).items()}
    assert bits == {"block1_conv": 8, "logits": 8, "dwconv": 8, "block2_pw": 4, "block3_pw": 4}
    with pytest.raises(ConfigError, match="matches no layer"):
        annotate.apply(trained_model, config.AnnotateConfig(int8_weights=("nope",)),
                       weight_bits=4)
    with pytest.raises(ConfigError, match="needs qat_w4a8"):
        config.from_dict({"annotate": {"int8_weights": ["logits"]}})


def test_a_peer_that_keeps_float_ops_is_reported_not_compared():
    """QAT is compared with the full-integer PTQs of its precision; a peer whose verdict is
    "no" (aeq_w4a8_mse leaves pooling float) only when no full-integer one exists."""
    from types import SimpleNamespace

    from pipeline.stages import intervals

    def result(full):
        return SimpleNamespace(full_int8=full)
    scored = {v: None for v in (Variant.FLOAT32, Variant.AEQ_W4A8, Variant.AEQ_W4A8_MSE,
                                Variant.QAT_W4A8)}
    ver = SimpleNamespace(scored=scored, variants={
        Variant.AEQ_W4A8: result(True), Variant.AEQ_W4A8_MSE: result(False),
        Variant.QAT_W4A8: result(True)})
    assert intervals.ptq_candidates(ver) == [Variant.AEQ_W4A8]
    ver.variants[Variant.AEQ_W4A8] = result(False)
    assert intervals.ptq_candidates(ver) == [Variant.AEQ_W4A8, Variant.AEQ_W4A8_MSE]
