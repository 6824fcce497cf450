"""Targets (``y_train`` / ``y_test``) by task: read from the data, the task decided against the
model's output, converted to the form the metrics take (pipeline/stages/metrics.py).

``data.task = "auto"`` decides from the output's rank and the targets: per-token outputs
(N, T, V) with integer targets (N, T) are a sequence model; a single output value per sample,
or targets with fractional values, a regression; integer labels (N,) / (N, 1) or one-hot rows
against (N, C) outputs a classifier. Setting ``data.task`` overrides the guess.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import ConfigError, DataError
from pipeline.stages.metrics import TASKS

_FIX_TASK = "or set data.task (classification, sequence or regression)"


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError("Unknown data.task", task, f"Use one of {', '.join(TASKS)}")


def read(y, where: str, task: str = "classification") -> np.ndarray:
    """The targets as stored, checked: class labels (classification, as int64 vectors) or,
    for the other tasks and "auto", numeric finite arrays kept as they are until ``convert``."""
    check_task(task)
    y = np.asarray(y)
    if task == "classification":
        return labels(y, where)
    if y.dtype.kind not in "biuf":
        raise DataError("Targets must be numeric", f"{where} has dtype {y.dtype}",
                        "Pass integer ids or float values")
    if y.ndim < 1:
        raise DataError("Targets need a batch dimension", f"{where} with shape {y.shape}",
                        "Stack one target per sample along axis 0")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise DataError("Targets contain NaN or infinite values", where,
                        "Clean the targets before running")
    return y


def labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class ids (N,), from ids, (N, 1) ids or one-hot rows."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)) or \
                not np.all(y.sum(axis=1) == 1):
            raise DataError("2-D labels must be one-hot rows", f"{where} with shape {y.shape}",
                            "Pass integer class ids (N,) or exact one-hot rows (or set "
                            "data.task = \"regression\" for whole-valued regression targets)")
        return y.argmax(axis=1).astype(np.int64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError("Labels must be class ids (N,) or one-hot (N, C)",
                        f"{where} with shape {y.shape}", "Reshape the labels")
    return _ids(y, where, "class ids 0..C-1")


def _ids(y: np.ndarray, where: str, what: str, pad: bool = False) -> np.ndarray:
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError("Labels must be whole class ids", f"{where} has non-integer values",
                            f"Pass integer {what}")
    elif y.dtype.kind not in "biu":
        raise DataError("Labels must be integer class ids", f"{where} has dtype {y.dtype}",
                        f"Encode them as {what}")
    y = y.astype(np.int64)
    low = -1 if pad else 0  # sequence targets: -1 marks padding (metrics.PAD)
    if len(y) and y.min() < low:
        raise DataError(f"Labels must be >= {low}", f"{where} min {int(y.min())}",
                        f"Encode them as {what}" + (" (-1 for padding)" if pad else ""))
    if pad and len(y) and not (y >= 0).any():
        raise DataError("Every sequence target is padding (-1)", where,
                        "Give the real next-token ids; -1 only where there is none")
    return y


def _whole(y: np.ndarray) -> bool:
    return y.dtype.kind in "biu" or bool(np.all(y == np.round(y)))


def resolve(task: str, y: np.ndarray, out_shape: tuple, ref: str) -> str:
    """The task of a model with output ``out_shape`` (batch first) trained on targets ``y``."""
    check_task(task)
    if task != "auto":
        return task
    rank = len(out_shape)
    width = out_shape[-1] if rank else None
    if rank == 3 and y.ndim in (2, 3) and _whole(y):
        return "sequence"
    if rank == 2 and width == 1:
        return "regression"
    if not _whole(y):
        return "regression"
    if rank == 2 and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        return "classification"
    if rank == 2:  # whole-valued targets for (N, C) outputs: class labels (convert checks)
        return "classification"
    raise DataError("Cannot tell the task from the model output and the targets",
                    f"output {_fmt(out_shape)}, targets {_fmt((None, *y.shape[1:]))} ({ref})",
                    "Pass class ids (N,) for (N, C) outputs, token ids (N, T) for (N, T, V) "
                    f"outputs, float targets for regression, {_FIX_TASK}")


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join("N" if i == 0 else ("?" if d is None else str(d))
                           for i, d in enumerate(shape)) + ")"


def convert(task: str, y: np.ndarray, out_shape: tuple, where: str) -> np.ndarray:
    """``y`` in the form the task's metrics take, checked against the output shape."""
    if task == "classification":
        return _classes(labels(y, where), out_shape, where)
    if task == "sequence":
        return _tokens(y, out_shape, where)
    return _values(y, out_shape, where)


def _classes(y: np.ndarray, out_shape: tuple, where: str) -> np.ndarray:
    num_outputs = int(out_shape[-1] or 0) if out_shape else 0
    if len(out_shape) != 2:
        raise DataError("A classifier needs (N, C) outputs", f"model output {_fmt(out_shape)}",
                        f"End the model with Dense(num_classes), {_FIX_TASK}")
    if num_outputs < 2:
        raise DataError("Only classification models with 2 or more outputs are supported",
                        f"model output size {num_outputs}",
                        "End the model with Dense(num_classes), or set data.task = "
                        "\"regression\" for a regression head")
    top = int(y.max(initial=0))
    if top >= num_outputs:
        raise DataError(f"Labels go up to {top} but the model has {num_outputs} outputs",
                        f"data={where.rsplit(':', 1)[0]}:y_train/y_test",
                        f"Use labels 0..{num_outputs - 1} or a model with {top + 1} outputs")
    return y


def _tokens(y: np.ndarray, out_shape: tuple, where: str) -> np.ndarray:
    if y.ndim == 3 and y.shape[-1] == 1:
        y = y[..., 0]
    if len(out_shape) != 3:
        raise DataError("A sequence model needs per-token outputs (N, T, V)",
                        f"model output {_fmt(out_shape)}",
                        f"Return logits for every position, {_FIX_TASK}")
    if y.ndim != 2:
        raise DataError("Sequence targets must be token ids (N, T)",
                        f"{where} with shape {y.shape}", "Pass one integer id per position")
    _, t, vocab = out_shape
    if t is not None and y.shape[1] != t:
        raise DataError(f"Sequence targets have {y.shape[1]} positions but the model "
                        f"outputs {t}", f"{where} with shape {y.shape}",
                        "Give one target id per output position")
    y = _ids(y, where, f"token ids 0..{(vocab or 1) - 1}", pad=True)
    if vocab and len(y) and int(y.max()) >= vocab:
        raise DataError(f"Token targets go up to {int(y.max())} but the model has {vocab} "
                        "outputs per position", where,
                        f"Use ids 0..{vocab - 1} or a model with a larger vocabulary")
    return y


def _values(y: np.ndarray, out_shape: tuple, where: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    if not np.all(np.isfinite(y)):
        raise DataError("Regression targets contain NaN or infinite values", where,
                        "Clean the targets before running")
    want = [d for d in out_shape[1:]]
    size = int(np.prod([d for d in want if d is not None])) if want else 1
    per = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
    if None in want or per != size:
        raise DataError(f"Regression targets hold {per} value(s) per sample but the model "
                        f"outputs {_fmt(out_shape)}", f"{where} with shape {y.shape}",
                        "Give one target per output value")
    return y.reshape((len(y), *want)) if want else y
