"""Standalone verification bundle: reference inputs and the expected outputs of each variant.

The pipeline writes ``reference/`` next to the models:
  inputs.npz              x (the test inputs: float32, or int32 ids), or x.<input name> per
                          input of a multi-input model (fed by name); y (labels, token ids
                          or regression targets)
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

from pipeline.core.errors import ModelFileError, UsageError
from pipeline.core.files import check_npy_member, open_regular, read_regular
from pipeline.core.records import SCHEMA_VERSION

REF_DIR = "reference"
# Different CPUs/kernels may round an int8 result differently: one output step is allowed.
DEFAULT_TOLERANCE_LSB = 1
DEFAULT_MIN_AGREEMENT = 0.99
FLOAT_RTOL = 1e-4
# A bundle comes from elsewhere (a CI cache, another machine): every file it names must lie
# inside its directory, be a regular file and stay within these sizes (an .npz counts the
# uncompressed size its zip directory declares, so a compression bomb is refused unread).
MAX_MANIFEST_BYTES = 1 << 20
MAX_NPZ_BYTES = 1 << 30


def save(run_dir, x, y: np.ndarray, variants: dict, *, task: str = "classification",
         output_index: int = 0) -> None:
    """``variants``: name -> (tflite bytes, raw outputs list, accuracy, output quant dicts).
    ``x``: the inputs, an array or {input name: array} (stored as ``x.<name>``, fed by name
    on re-verification); ``y``: class ids, token ids (N, T) or regression targets;
    ``output_index``: the output the metrics score (a multi-output model)."""
    def stored(a):  # token ids stay integers, features float32
        a = np.asarray(a)
        return a if a.dtype.kind in "iu" else a.astype(np.float32)
    arrays = {f"x.{k}": stored(v) for k, v in x.items()} if isinstance(x, dict) else \
        {"x": stored(x)}
    y = np.asarray(y)
    arrays["y"] = y.astype(np.float32) if task == "regression" else y.astype(np.int64)
    with run_dir.writing(f"{REF_DIR}/inputs.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    doc = {"schema_version": SCHEMA_VERSION, "tolerance_lsb": DEFAULT_TOLERANCE_LSB,
           "min_agreement": DEFAULT_MIN_AGREEMENT, "samples": int(len(y)), "variants": {}}
    if task != "classification":
        doc["task"] = task
    if output_index:
        doc["output_index"] = int(output_index)
    for name, (content, raw, accuracy, quants) in variants.items():
        rel = f"{REF_DIR}/{name}_outputs.npz"
        with run_dir.writing(rel) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, *raw)
        doc["variants"][name] = {"file": f"{name}.tflite",
                                 "sha256": hashlib.sha256(content).hexdigest(),
                                 "outputs": f"{name}_outputs.npz",
                                 "accuracy": accuracy if accuracy == accuracy else None,
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
        if os.path.lexists(cand / "expected.json") and os.path.lexists(cand / "inputs.npz"):
            return cand
    raise UsageError("No reference bundle found", directory,
                     "Pass a run directory (artifacts/NAME) or its reference/ folder")


def bundle_file(ref: Path, name: object) -> Path:
    """``name`` (from the manifest) as a path inside the bundle directory ``ref``, resolved:
    an absolute path, a ``..`` escape or a symlink leading outside the bundle is refused."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise UsageError("The reference manifest names an invalid file", repr(name)[:200],
                         "Re-run the pipeline to rewrite the bundle")
    if os.path.isabs(name):
        raise UsageError("The reference manifest names a file outside the bundle (an "
                         "absolute path)", name, "Only files inside the reference/ folder "
                         "are read; re-run the pipeline to rewrite the bundle")
    root = ref.resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise UsageError("The reference bundle names a file outside its directory",
                         f"{name} -> {path}", "Only files inside the reference/ folder are "
                         "read (no '..', no symlinks out); re-run the pipeline to rewrite the "
                         "bundle")
    return path


def _load_npz(ref: Path, name: str) -> dict[str, np.ndarray]:
    """Every array of a bundle .npz (no pickles), sizes checked before decompressing."""
    import zipfile

    path = bundle_file(ref, name)
    f, _ = open_regular(path, "reference file", MAX_NPZ_BYTES, UsageError)
    with f:
        try:
            with zipfile.ZipFile(f) as zf:
                declared = sum(i.file_size for i in zf.infolist())
                if declared > MAX_NPZ_BYTES:
                    raise UsageError("A reference .npz is too large once decompressed",
                                     f"{path} ({declared:,} bytes; the limit is "
                                     f"{MAX_NPZ_BYTES:,})", "Re-run the pipeline to rewrite "
                                     "the bundle")
                for member in zf.namelist():  # each header before numpy allocates its shape
                    if member.endswith(".npy"):
                        check_npy_member(zf, member, f"{path}:{member[:-4]}", UsageError)
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise UsageError("A reference .npz is unreadable", f"{path} ({type(exc).__name__})",
                             "Re-run the pipeline to rewrite the bundle")


def _check_doc(doc, path: Path) -> dict:
    """The manifest's shape: an object whose ``variants`` map names to objects with an
    ``outputs`` file name."""
    variants = doc.get("variants") if isinstance(doc, dict) else None
    if not isinstance(variants, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("outputs"), str) for v in variants.values()):
        raise UsageError("The reference manifest has an unexpected structure", str(path),
                         "Re-run the pipeline to rewrite the bundle")
    return doc


def load(directory: str) -> tuple[Path, dict, np.ndarray, np.ndarray]:
    ref = _locate(directory)
    manifest = bundle_file(ref, "expected.json")
    try:
        text = read_regular(manifest, "reference manifest", MAX_MANIFEST_BYTES, UsageError)
        doc = _check_doc(json.loads(text), manifest)
    except (ValueError, RecursionError) as exc:
        raise UsageError("The reference bundle is unreadable", str(manifest),
                         f"Re-run the pipeline to rewrite it ({type(exc).__name__})")
    arrays = _load_npz(ref, "inputs.npz")
    named = {k[2:]: v for k, v in arrays.items() if k.startswith("x.")}
    if not ("x" in arrays or named) or "y" not in arrays:
        raise UsageError("The reference inputs.npz lacks the x or y array",
                         f"{ref / 'inputs.npz'} has {sorted(arrays)[:5]}",
                         "Re-run the pipeline to rewrite the bundle")
    # several inputs: {input name: array}, fed by name (tflite/feeding.py)
    return ref, doc, (named or arrays["x"]), arrays["y"]


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
    arrays = _load_npz(ref, entry["outputs"])
    try:
        expected = [arrays[f"arr_{k}"] for k in range(len(arrays))]
    except KeyError:
        raise UsageError("A reference outputs .npz has unexpected array names",
                         f"{entry['outputs']}: {sorted(arrays)[:5]}",
                         "Re-run the pipeline to rewrite the bundle")
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
    k = int(doc.get("output_index", 0)) if isinstance(doc.get("output_index", 0), int) else 0
    k = k if 0 <= k < len(raw_outputs) else 0
    task = doc.get("task", "classification")
    agree = float(np.mean(raw_outputs[k].argmax(-1) == expected[k].argmax(-1)))
    if agree < min_agree and task != "regression":  # argmax means nothing for regression
        reasons.append(f"top-1 agreement {agree:.4f} < {min_agree}")
    # classification: top-1 accuracy; sequence: token accuracy (both on raw outputs, whose
    # argmax is that of the dequantized ones); regression: none (the outputs are checked)
    accuracy = float("nan") if task == "regression" or y.shape != raw_outputs[k].shape[:-1] \
        else float(np.sum(raw_outputs[k].argmax(-1) == y) / max(np.sum(y != -1), 1))  # -1: pad
    return ReferenceCheck(name, matched_by, int(len(y)), not reasons, float(np.mean(exact)),
                          max_lsb, max_abs, agree, accuracy,
                          float(entry.get("accuracy") if entry.get("accuracy") is not None
                                else "nan"),
                          tol, min_agree, tuple(reasons))
