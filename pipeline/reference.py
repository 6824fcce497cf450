"""Standalone verification bundle: reference inputs and the expected outputs of each variant.

The pipeline writes ``reference/`` next to the models:
  inputs.npz              x (the test inputs, float32) and y (labels)
  <variant>_outputs.npz   the raw outputs of each .tflite on x (int8 for int8 models)
  expected.json           sha256 of each .tflite, output quantization, accuracy, tolerances

``qat verify MODEL.tflite --reference DIR`` re-runs a model on those inputs and checks the
outputs, with nothing but numpy and a LiteRT interpreter installed - how a user checks a model
on an edge Linux box or in an app's CI. This module must never import TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ModelFileError, UsageError
from pipeline.records import SCHEMA_VERSION

REF_DIR = "reference"
# Different CPUs/kernels may round an int8 result differently: one output step is allowed.
DEFAULT_TOLERANCE_LSB = 1
DEFAULT_MIN_AGREEMENT = 0.99
FLOAT_RTOL = 1e-4


def save(run_dir, x: np.ndarray, y: np.ndarray, variants: dict) -> None:
    """``variants``: name -> (tflite bytes, raw outputs list, accuracy, output quant dicts)."""
    with run_dir.writing(f"{REF_DIR}/inputs.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, x=x.astype(np.float32), y=y.astype(np.int64))
    doc = {"schema_version": SCHEMA_VERSION, "tolerance_lsb": DEFAULT_TOLERANCE_LSB,
           "min_agreement": DEFAULT_MIN_AGREEMENT, "samples": int(len(x)), "variants": {}}
    for name, (content, raw, accuracy, quants) in variants.items():
        rel = f"{REF_DIR}/{name}_outputs.npz"
        with run_dir.writing(rel) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, *raw)
        doc["variants"][name] = {"file": f"{name}.tflite",
                                 "sha256": hashlib.sha256(content).hexdigest(),
                                 "outputs": f"{name}_outputs.npz", "accuracy": accuracy,
                                 "output_quant": quants}
    run_dir.write_json(f"{REF_DIR}/expected.json", doc)


@dataclass(frozen=True)
class ReferenceCheck:
    variant: str
    matched_by: str
    samples: int
    passed: bool
    exact_fraction: float
    max_error_lsb: float | None
    max_abs_error: float
    top1_agreement: float
    accuracy: float
    expected_accuracy: float
    tolerance_lsb: float
    min_agreement: float
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def _locate(directory: str) -> Path:
    d = Path(directory)
    for cand in (d, d / REF_DIR):
        if (cand / "expected.json").is_file() and (cand / "inputs.npz").is_file():
            return cand
    raise UsageError("No reference bundle found", directory,
                     "Pass a run directory (artifacts/NAME) or its reference/ folder")


def load(directory: str) -> tuple[Path, dict, np.ndarray, np.ndarray]:
    ref = _locate(directory)
    try:
        doc = json.loads((ref / "expected.json").read_text())
        with np.load(ref / "inputs.npz", allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (ValueError, KeyError, OSError) as exc:
        raise UsageError("The reference bundle is unreadable", str(ref),
                         f"Re-run the pipeline to rewrite it ({type(exc).__name__})")
    return ref, doc, x, y


def pick_variant(doc: dict, model_bytes: bytes, model_path: str,
                 variant: str | None) -> tuple[str, str]:
    """(variant name, how it was matched): explicit name, then sha256, then file name."""
    variants = doc.get("variants", {})
    if variant:
        if variant not in variants:
            raise UsageError("The reference has no such variant", variant,
                             f"Use one of {', '.join(sorted(variants))}")
        return variant, "--variant"
    digest = hashlib.sha256(model_bytes).hexdigest()
    for name, v in variants.items():
        if v.get("sha256") == digest:
            return name, "sha256"
    stem = Path(model_path).stem
    if stem in variants:
        return stem, "file name (the file differs from the one the reference was made from)"
    raise UsageError("Cannot tell which variant this model is", os.path.basename(model_path),
                     f"Pass --variant with one of {', '.join(sorted(variants))}")


def check(raw_outputs: list[np.ndarray], ref: Path, doc: dict, name: str, y: np.ndarray,
          matched_by: str, *, tolerance_lsb: float | None = None,
          min_agreement: float | None = None) -> ReferenceCheck:
    """Compare a model's raw outputs on the reference inputs with the expected ones."""
    entry = doc["variants"][name]
    tol = float(doc.get("tolerance_lsb", DEFAULT_TOLERANCE_LSB) if tolerance_lsb is None
                else tolerance_lsb)
    min_agree = float(doc.get("min_agreement", DEFAULT_MIN_AGREEMENT) if min_agreement is None
                      else min_agreement)
    with np.load(ref / entry["outputs"], allow_pickle=False) as npz:
        expected = [npz[f"arr_{k}"] for k in range(len(npz.files))]
    reasons = []
    if len(expected) != len(raw_outputs):
        raise ModelFileError("The model has a different number of outputs than the reference",
                             f"{len(raw_outputs)} vs {len(expected)}",
                             "Check you are verifying the right model")
    exact, max_lsb, max_abs = [], None, 0.0
    for got, want in zip(raw_outputs, expected):
        if got.shape != want.shape:
            raise ModelFileError("Output shape differs from the reference",
                                 f"{got.shape} vs {want.shape}", "Check the model and inputs")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        exact.append(float(np.mean(diff == 0)))
        max_abs = max(max_abs, float(diff.max()))
        if want.dtype.kind in "iu":
            max_lsb = max(max_lsb or 0.0, float(diff.max()))
            if diff.max() > tol:
                reasons.append(f"max output difference {diff.max():.0f} LSB > {tol:g}")
        else:
            bound = FLOAT_RTOL * max(1.0, float(np.abs(want).max()))
            if diff.max() > bound:
                reasons.append(f"max float output difference {diff.max():.3g} > {bound:.3g}")
    agree = float(np.mean(raw_outputs[0].argmax(-1) == expected[0].argmax(-1)))
    if agree < min_agree:
        reasons.append(f"top-1 agreement {agree:.4f} < {min_agree}")
    accuracy = float(np.mean(raw_outputs[0].argmax(-1) == y))
    return ReferenceCheck(name, matched_by, int(len(y)), not reasons, float(np.mean(exact)),
                          max_lsb, max_abs, agree, accuracy, float(entry.get("accuracy", "nan")),
                          tol, min_agree, tuple(reasons))
