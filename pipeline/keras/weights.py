"""Finite weights: checked on the weights themselves, whatever kernels computed the loss.

A NaN loss is not a reliable alarm: TensorFlow's oneDNN rewrites (on by default on AVX-512 VNNI /
AMX CPUs, see pipeline/core/machine.py) fuse ops whose NaN input comes out as 0, so a model with NaN
weights can train with a finite loss there and only fail later, in the converter or in
XNNPACK ("failed to prepare"). The pipeline therefore checks the weights when a model is
loaded, before training, and after every epoch, and says where the NaN came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Bad:
    weight: str   # the variable's name, e.g. "conv1/kernel:0"
    nan: int
    inf: int
    size: int

    def __str__(self) -> str:
        kinds = ", ".join(f"{n} {k}" for n, k in ((self.nan, "NaN"), (self.inf, "inf")) if n)
        return f"{self.weight} ({kinds} of {self.size})"


def nonfinite(model) -> list[Bad]:
    """Every weight of ``model`` (trainable or not: BN statistics, quantizer ranges too)
    that holds a NaN or an infinity."""
    bad = []
    for w in model.weights:
        a = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        nan = int(np.isnan(a).sum())
        inf = int(np.isinf(a).sum())
        if nan or inf:
            bad.append(Bad(getattr(w, "name", "?"), nan, inf, int(a.size)))
    return bad


def describe(bad: list[Bad], limit: int = 3) -> str:
    """'a (1 NaN of 9), b (...) and 2 more weights' — short enough for one error line."""
    text = ", ".join(str(b) for b in bad[:limit])
    return text + (f" and {len(bad) - limit} more weights" if len(bad) > limit else "")
