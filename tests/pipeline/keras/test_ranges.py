"""Activation-range initialisation (pipeline/keras/ranges.py) on the trained digits model."""

import numpy as np

from pipeline.stages import annotate, convert

from pipeline.keras import ranges
from pipeline.core.records import Variant
from pipeline.tflite.runtime import ModelRunner


def _range_vars(model):
    return {v.name: v.numpy() for v in model.variables if ranges._is_range(v)}


def test_ranges_come_from_the_data_and_nothing_else_changes(env, trained_model, digits):
    qat, _ = annotate.apply(trained_model)
    x = digits["x_train"][:256]
    relu = qat.get_layer("quant_block1_relu")
    # block1's output in training mode (the pass init_ranges makes); it went through the
    # fake-quant of the old [-6, 6] range, so it is known to within one old step (12/255)
    y = env.keras.Model(qat.inputs, relu.output)(x, training=True).numpy()
    others = {v.name: v.numpy() for v in qat.variables if not ranges._is_range(v)}
    before = _range_vars(qat)
    info = ranges.init_ranges(qat, x)
    after = _range_vars(qat)
    assert info["samples"] == 256 and info["ranges"] > 0
    assert info["ranges"] == sum(not np.array_equal(before[k], after[k]) for k in before)
    acts = [k for k in after if "/output_" in k or "/post_activation_" in k]
    assert len(acts) >= 14  # 7 activation quantizers (block1..3, gap, logits), min and max
    assert all(float(after[k]) not in (-6.0, 6.0) for k in acts), after  # tfmot's start
    assert float(after["quant_block1_relu/output_min:0"]) == 0.0  # ReLU: [0, max]
    assert abs(float(after["quant_block1_relu/output_max:0"]) - float(y.max())) <= 12 / 255
    # weights and BatchNormalization statistics are untouched by the training-mode pass
    for name, value in others.items():
        now = next(v.numpy() for v in qat.variables if v.name == name)
        np.testing.assert_array_equal(now, value, err_msg=name)


def test_converted_model_uses_the_initialised_ranges(env, trained_model, digits):
    x = digits["x_train"][:256]
    qat, _ = annotate.apply(trained_model)
    ranges.init_ranges(qat, x)
    lo, hi = (float(v.numpy()) for v in qat.get_layer("quant_logits").weights
              if v.name.endswith(("post_activation_min:0", "post_activation_max:0")))
    c = convert.convert(Variant.QAT_INT8, qat, representative=x)
    runner = ModelRunner(c.content)
    assert np.isclose(runner.outputs[0].quant.scale, (hi - lo) / 255, rtol=1e-3)
    xt = digits["x_test"]
    got = runner.run(xt)[0]
    ref = qat.predict(xt, verbose=0)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.99


def test_empty_sample_is_a_no_op(env, trained_model):
    qat, _ = annotate.apply(trained_model)
    before = _range_vars(qat)
    assert ranges.init_ranges(qat, np.zeros((0, 8, 8, 1), np.float32))["ranges"] == 0
    assert all(np.array_equal(before[k], v) for k, v in _range_vars(qat).items())
