"""Activation ranges for QAT, initialised from data before fine-tuning.

tfmot's activation quantizers (``MovingAverageQuantizer``) start every range at [-6, 6] and
move it towards the observed one by an exponential moving average whose decay is hard-coded
to 0.999 (tfmot quantizers.py): after 200 training steps a range is still 82 % its initial
value, after 1,000 still 37 %. A short fine-tune - the usual QAT recipe - therefore trains
and converts with ranges that mostly reflect the constant 6, not the model: signals far
smaller than 6 get a handful of int8 steps, larger ones are clipped.

``init_ranges`` does what PTQ calibration does first: one forward pass in training mode over
a batch of training samples with the EMA decay set to 0 for that pass, so every activation
range becomes the batch's own [min, max] (0 included, as TFLite requires). Fine-tuning then
continues from there with tfmot's own EMA. Everything else the pass touches
(BatchNormalization statistics) is restored, so only the ranges change.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import numpy as np

from pipeline.core import keras_env


@contextmanager
def _ema_decay_zero(env):
    """For the duration of the block, tfmot's MovingAvgQuantize assigns the batch range
    instead of averaging it in (decay 0): var <- var - (var - value) * (1 - 0) = value."""
    quantizer = env.tfmot.quantization.keras.quantizers.MovingAverageQuantizer
    quant_ops = sys.modules[quantizer.__module__].quant_ops  # the module its __call__ uses
    original = quant_ops.MovingAvgQuantize

    def batch_range(*args, **kwargs):
        kwargs["ema_decay"] = 0.0
        return original(*args, **kwargs)

    quant_ops.MovingAvgQuantize = batch_range
    try:
        yield
    finally:
        quant_ops.MovingAvgQuantize = original


def _is_range(var) -> bool:
    name = var.name.split(":")[0]
    return name.endswith("_min") or name.endswith("_max")


def init_ranges(qat_model, x: np.ndarray) -> dict:
    """Set the activation ranges of ``qat_model`` (from ``quantize_apply``) from ``x``.

    Returns {"ranges": number of range variables set, "samples": len(x),
    "widest_before": ..., "widest_after": ...} (the largest |min|/|max| over all ranges)."""
    env = keras_env.load()
    # several inputs: a list of arrays in the model's order, or {input name: array}
    if isinstance(x, dict):
        x = [np.asarray(x[name]) for name in qat_model.input_names]
    x = [np.asarray(a) for a in x] if isinstance(x, (list, tuple)) else np.asarray(x)
    n = len(x[0]) if isinstance(x, list) else len(x)
    if n == 0:
        return {"ranges": 0, "samples": 0}
    others = [v for v in qat_model.variables if not _is_range(v)]
    saved = [v.numpy() for v in others]
    ranges = [v for v in qat_model.variables if _is_range(v)]
    before = [v.numpy() for v in ranges]
    with _ema_decay_zero(env):
        qat_model(x, training=True)
    for v, value in zip(others, saved):
        v.assign(value)
    after = [v.numpy() for v in ranges]
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, after))
    widest = (lambda vals: float(max((np.abs(a).max() for a in vals), default=0.0)))
    return {"ranges": int(changed), "samples": int(n),
            "widest_before": widest(before), "widest_after": widest(after)}
