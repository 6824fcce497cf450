"""Real inputs from an ``.npz`` instead of random ones.

``--inputs data.npz`` picks the array for a single-input model (the only array, else the first
of x_test / x_val / x / inputs); ``--inputs data.npz:KEY`` names it; a multi-input model takes
one array per input, matched by name (its tensor name, its Keras / signature name, or
``x_test.<name>`` / ``x.<name>`` as in the pipeline's data files and reference bundles,
e.g. ``--inputs artifacts/NAME/reference/inputs.npz``), never by position. Float data is quantized with each input's own scale and
zero point (so the same file feeds float32 and int8 variants). The host rotates through the
first samples; benchmark_model takes one raw file per input, so the device gets sample 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from android_harness.errors import InputDataError
from pipeline.core.records import QuantParams
from pipeline.tflite import feeding
from pipeline.tflite.tflite_model import TFLiteModel

MAX_SAMPLES = 64  # the host cycles through at most this many samples
_DEFAULT_KEYS = ("x_test", "x_val", "x", "inputs")
_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8, "UINT8": np.uint8,
          "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
          "FLOAT64": np.float64}


@dataclass(frozen=True)
class ModelInput:
    name: str
    shape: tuple[int, ...]  # the model's input shape, batch dimension first
    samples: np.ndarray  # (n, *shape[1:]) in the tensor's dtype
    key: str = ""  # its signature name (= the Keras input name), when the model has one

    def answers_to(self, name: str) -> bool:
        return name in (self.name, self.key)

    @property
    def count(self) -> int:
        """Number of whole batches available."""
        return len(self.samples) // self.shape[0]

    def batch(self, i: int = 0) -> np.ndarray:
        b = self.shape[0]
        k = i % self.count
        return np.ascontiguousarray(self.samples[k * b:(k + 1) * b].reshape(self.shape))

    def batch_bytes(self, i: int = 0) -> bytes:
        return self.batch(i).tobytes()


def split_spec(spec: str) -> tuple[Path, str | None]:
    path, _, key = spec.rpartition(":") if not os.path.exists(spec) else (spec, "", "")
    if not path:  # no ':' at all
        path, key = spec, ""
    return Path(path), (key or None)


def load_inputs(spec: str, model_path: str | os.PathLike) -> list[ModelInput]:
    """Arrays for every input of the model, converted to the input dtypes."""
    path, key = split_spec(spec)
    arrays = _read_npz(path)
    view = TFLiteModel.from_file(model_path)
    tensors = view.inputs()
    slots = feeding.slots_of_model(view)
    chosen = _choose_arrays(arrays, tensors, key, slots)
    fitted = [_fit_input(t, chosen[t.name], spec, s.key) for t, s in zip(tensors, slots)]
    bounds = feeding.id_bounds(view)
    for t, s, inp in zip(tensors, slots, fitted):  # ids past an Embedding's table
        bound = bounds.get(t.index)
        if bound and len(inp.samples) and (inp.samples.min() < 0 or
                                           inp.samples.max() >= bound):
            raise InputDataError(f"Input {s.name} holds ids outside the table it indexes",
                                 f"values {inp.samples.min()}..{inp.samples.max()} in {spec}",
                                 f"Pass ids in 0..{bound - 1} for {s.describe()}")
    return fitted


def _read_npz(path: Path) -> dict:
    if not path.is_file():
        raise InputDataError("The --inputs file does not exist", os.fspath(path),
                             "Pass an .npz written with numpy.savez")
    try:
        data = np.load(path, allow_pickle=False)
        return {k: data[k] for k in data.files}
    except Exception as exc:
        raise InputDataError("The --inputs file is not a readable .npz", f"{path} ({exc})",
                             "Write it with numpy.savez(path, x_test=array)")


def _choose_arrays(arrays: dict, tensors, key: str | None, slots=()) -> dict:
    """{input tensor name: array}: the array named by ``key``, the only or the usual one
    (x_test, ...) for a single-input model, else one array per input named like it: its
    tensor name, its signature (Keras) name, or that name after ``x_test.`` / ``x.`` (the
    pipeline's data files and reference bundles, reference/inputs.npz)."""
    if key is not None:
        if key not in arrays:
            raise InputDataError("The --inputs key is not in the .npz",
                                 f"{key} (keys: {', '.join(sorted(arrays))})",
                                 "Pass one of the listed keys after ':'")
        if len(tensors) != 1:
            raise InputDataError("A single --inputs key was given for a multi-input model",
                                 f"{len(tensors)} inputs", "Name the arrays after the inputs: "
                                 + ", ".join(t.name for t in tensors))
        return {tensors[0].name: arrays[key]}
    if len(tensors) == 1:
        pick = next((k for k in _DEFAULT_KEYS if k in arrays), None)
        if len(arrays) == 1:
            pick = next(iter(arrays))
        if pick is None:
            raise InputDataError("Cannot tell which array of the .npz feeds the model",
                                 f"keys: {', '.join(sorted(arrays))}", "Pass --inputs FILE:KEY")
        return {tensors[0].name: arrays[pick]}
    chosen: dict = {}
    for prefix in ("", "x_test.", "x."):  # a bare name first, then the data-file forms
        for k, arr in arrays.items():
            if prefix and not k.startswith(prefix):
                continue
            i = feeding.find(list(slots), k[len(prefix):]) if slots else None
            if i is None and not prefix and k in [t.name for t in tensors]:
                i = [t.name for t in tensors].index(k)
            if i is not None:
                chosen.setdefault(tensors[i].name, arr)
    missing = [s.describe() if slots else t.name
               for t, s in zip(tensors, slots or tensors) if t.name not in chosen]
    if missing:
        raise InputDataError("The .npz lacks arrays named after the model inputs",
                             f"missing {'; '.join(missing)} (keys: "
                             f"{', '.join(sorted(arrays))[:300]})",
                             "Save one array per input, named like the inputs (e.g. "
                             "x_test.<input name>, or pass artifacts/NAME/reference/inputs.npz)")
    return chosen


def _fit_input(t, array, spec: str, key: str = "") -> ModelInput:
    """One input's array checked against the tensor's shape, cut to MAX_SAMPLES batches and
    converted (quantized, for an int8 input given floats) to its dtype."""
    x = np.asarray(array)
    shape = tuple(d if d > 0 else 1 for d in (t.shape or (1,)))
    if x.shape[1:] != shape[1:]:
        if x.ndim == len(shape) - 1 and x.shape == shape[1:]:
            x = x[None]  # a single sample without the batch axis
        else:
            raise InputDataError(
                f"Input data has shape {x.shape} but the model expects (N, "
                f"{', '.join(map(str, shape[1:]))})", f"inputs={spec} for {t.name}",
                "Reshape the array or pass another key")
    if len(x) < shape[0]:
        raise InputDataError("The --inputs array has fewer samples than the model's batch",
                             f"{len(x)} < {shape[0]} for {t.name}", "Pass more samples")
    dtype = _NUMPY.get(t.dtype)
    if dtype is None:
        raise InputDataError("Unsupported input dtype for --inputs", f"{t.name}: {t.dtype}",
                             "Run without --inputs (random inputs)")
    x = x[:MAX_SAMPLES * shape[0]]
    q = t.quantization
    if np.issubdtype(dtype, np.integer) and q and q.scales and x.dtype.kind == "f":
        x = QuantParams(float(q.scales[0]), int(q.zero_points[0] if q.zero_points else 0),
                        np.dtype(dtype).name).quantize(x)
    return ModelInput(t.name, shape, x.astype(dtype, copy=False), key)
