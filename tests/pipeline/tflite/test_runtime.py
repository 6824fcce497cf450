import warnings

import numpy as np
import pytest

from pipeline.core.errors import ConfigError, ModelFileError, UsageError
from pipeline.core.records import QuantParams, Runtime, Variant
from pipeline.tflite.runtime import ModelRunner, auto_batch_size, make_interpreter, resolve_runtime
from pipeline.tflite.tflite_model import TFLiteModel


def test_quant_params_round_trip():
    q = QuantParams(0.05, -3)
    x = np.array([-6.3, -0.02, 0.0, 1.234, 6.5], np.float32)
    r = q.dequantize(q.quantize(x))
    inside = np.abs(x) < 6.2  # representable range: 0.05 * (-128 + 3) .. 0.05 * (127 + 3)
    assert np.all(np.abs(r[inside] - x[inside]) <= 0.025 + 1e-7)  # half an LSB
    assert q.quantize(np.array([100.0])).item() == 127  # saturates
    # half away from zero, like TFLite's QUANTIZE kernel (std::round), not numpy's half-even
    one = QuantParams(1.0, 0)
    assert one.quantize(np.array([2.5, -2.5, 0.5, 1.5])).tolist() == [3, -3, 1, 2]


@pytest.mark.parametrize("variant", [v for v in Variant if v is not Variant.AEQ_MIXED])
@pytest.mark.parametrize("batch, workers", [(1, 1), (7, 1), (64, 1), (450, 1), (7, 2),
                                            (64, 3), (0, 1), (0, 2)])
def test_batched_equals_one_at_a_time(tflite_variants, digits, variant, batch, workers):
    """Batching (with a zero-padded last batch) and sharding over several interpreters must
    not change any output."""
    x = digits["x_test"][:100]
    content = tflite_variants[variant].content
    single = ModelRunner(content, batch_size=1).run(x)[0]
    batched = ModelRunner(content, batch_size=batch, workers=workers).run(x)[0]
    assert batched.shape == single.shape == (100, 10)
    if not variant.is_weight_only:
        np.testing.assert_array_equal(batched, single)
        return
    # weight-only: float convolutions over runtime-dequantized weights, whose XNNPACK kernel
    # sums in another order for another batch size (measured: up to 2.4e-6 on logits near 5).
    # Bound: float32 eps x a reduction length x the largest logit. This model's longest sum
    # is the classifier's 48 inputs (convs: 9, 16 and 32 terms); 256 leaves room for the
    # layers' errors adding up
    tol = np.finfo(np.float32).eps * 256 * np.abs(single).max()
    np.testing.assert_allclose(batched, single, rtol=0, atol=tol)


@pytest.mark.parametrize("variant", [v for v in Variant if v is not Variant.AEQ_MIXED])
def test_auto_batch_keeps_one_batch_of_activations_within_the_budget(tflite_variants, variant):
    """Batch 0 = cache-sized: per-sample activation bytes, computed here from the flatbuffer
    (tensors with a dynamic batch dimension), times the batch stays within the budget."""
    content = tflite_variants[variant].content
    view = TFLiteModel.from_bytes(content)
    bits = {"FLOAT32": 32, "INT8": 8, "INT32": 32, "UINT8": 8, "INT16": 16}
    per_sample = sum(int(np.prod(t.shape[1:])) * bits[t.dtype] // 8
                     for t in view.subgraphs[0].tensors
                     if t.shape_signature and t.shape_signature[0] == -1)
    assert per_sample > 0
    budget = 64 * 1024
    got = auto_batch_size(make_interpreter(content), budget=budget)
    assert got == min(256, budget // per_sample)
    assert got * per_sample <= budget < (got + 1) * per_sample or got == 256
    assert ModelRunner(content).batch_size == auto_batch_size(make_interpreter(content))
    assert auto_batch_size(make_interpreter(content), budget=1) == 1
    with pytest.raises(UsageError, match="0 \\(auto\\) or more"):
        ModelRunner(content, batch_size=-1)


def test_a_model_whose_batch_cannot_be_resized_runs_one_sample_per_invoke(env, digits):
    """A graph with the batch baked in (a Reshape to a constant [1, 64]) cannot be allocated
    at a larger batch: the runner falls back to one sample per invoke and every output is
    still the model's own."""
    tf = env.tf
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(64, 10)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32)])
    def fixed(x):
        return tf.matmul(tf.reshape(x, tf.constant([1, 64])), w)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([fixed.get_concrete_function()],
                                                           fixed)
    content = conv.convert()
    x = digits["x_test"][:20]
    with pytest.raises(Exception):  # the premise: LiteRT refuses the batch of 20
        it = make_interpreter(content)
        it.resize_tensor_input(it.get_input_details()[0]["index"], [20, 8, 8, 1], strict=False)
        it.allocate_tensors()
    expected = x.reshape(20, 64) @ w.numpy()
    for batch, workers in ((0, 1), (4, 2)):  # auto batch; two interpreters, two shards
        runner = ModelRunner(content, batch_size=batch, workers=workers)
        for _ in range(2):  # a second run must not retry (and half-apply) the larger batch
            out = runner.run(x)[0]
            assert out.shape == (20, 10)
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
        assert [wk.batch for wk in runner._workers] == [1] * workers


def test_int8_inputs_use_the_models_own_quantization(tflite_variants, digits):
    runner = ModelRunner(tflite_variants[Variant.QAT_INT8].content)
    spec = runner.inputs[0]
    assert spec.dtype == np.int8 and spec.quant.scale > 0
    x = digits["x_test"][:10]
    pre_quantized = spec.quant.quantize(x)
    np.testing.assert_array_equal(runner.run(x)[0], runner.run(pre_quantized)[0])
    raw = runner.run(x, dequantize=False)[0]
    assert raw.dtype == np.int8
    np.testing.assert_allclose(runner.outputs[0].quant.dequantize(raw), runner.run(x)[0])


def test_runtime_selection():
    name, mod = resolve_runtime("auto")
    assert name == "litert" and hasattr(mod, "Interpreter")
    with pytest.raises(UsageError, match="Unknown interpreter runtime"):
        resolve_runtime("onnx")


def test_every_runtime_name_is_accepted_everywhere_and_names_its_package():
    """The CLI's --runtime choices, verify.runtime and resolve_runtime accept the same names
    (core.records.Runtime); each runtime that imports here is provided by the distribution
    its ``package`` names (host results record that distribution's version)."""
    from importlib import metadata

    from pipeline.cli.app import parse_args
    from pipeline.stages.config import VerifyConfig

    for name in Runtime.names():
        assert parse_args(["verify", "m.tflite", "--runtime", name]).runtime == name
        assert VerifyConfig(runtime=name).runtime == name
    for runtime in Runtime:
        try:
            got, _ = resolve_runtime(runtime.value)
        except UsageError:  # not installed here (tflite_runtime needs numpy<2)
            continue
        assert got == runtime.value and metadata.version(runtime.package)
    with pytest.raises(ConfigError, match="Unknown verify.runtime"):
        VerifyConfig(runtime="onnx")


@pytest.mark.parametrize("variant", [Variant.PTQ_INT8, Variant.QAT_INT8])
def test_tf_lite_fallback_agrees_within_one_lsb(tflite_variants, digits, variant):
    """ai_edge_litert and TensorFlow's bundled tf.lite are two builds of the int8 kernels and
    need not be bit-identical: their MEAN rounds an exact .5 tie half-to-even in one and
    half-away-from-zero in the other, one LSB of the pooled value. Tolerance: at most 1 LSB
    of the int8 output. Measured on this fixture (trained + QAT fine-tuned digits model, 450
    images x 10 logits): 100 % of the outputs exactly equal; >= 99 % is required, so a
    systematic difference (not a rare tie) still fails."""
    content = tflite_variants[variant].content
    x = digits["x_test"]
    a = ModelRunner(content, runtime="litert").run(x, dequantize=False)[0].astype(np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tf.lite.Interpreter is deprecated": known, tested
        b = ModelRunner(content, runtime="tensorflow").run(x, dequantize=False)[0]
    diff = np.abs(a - b.astype(np.int32))
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.99


def test_tflite_runtime_is_optional():
    try:
        import tflite_runtime  # noqa: F401
    except Exception:
        with pytest.raises(UsageError, match="No LiteRT interpreter"):
            resolve_runtime("tflite_runtime")
    else:  # pragma: no cover - only where the optional package is installed
        assert resolve_runtime("tflite_runtime")[0] == "tflite_runtime"


def test_wrong_input_count_and_garbage_model():
    with pytest.raises(ModelFileError):
        ModelRunner(b"\x00" * 64)
