"""Datasets: a zoo dataset by name or an .npz file, validated against the model before training.

.npz format (``np.savez``): ``x_train``, ``y_train``, ``x_test``, ``y_test``. ``x_*`` numeric
arrays shaped like the model input with the batch first, e.g. (N, 8, 8, 1), already preprocessed
as the model expects; ``y_*`` integer class labels (N,) or (N, 1), or one-hot (N, C). Object
arrays are refused (they would need pickle, which runs code).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from models import DATASETS, get_dataset
from pipeline.core import files
from pipeline.core.errors import DataError, first_line

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    preprocessing: dict = field(default_factory=dict)
    card: dict | None = None  # a generated zoo dataset's card (models/datacache.py)

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    def summary(self) -> dict:
        return {"name": self.name, "source": self.source,
                "train": int(len(self.x_train)), "test": int(len(self.x_test)),
                "input_shape": list(self.x_train.shape[1:]),
                "classes": self.num_classes, "preprocessing": self.preprocessing}


def load(name: str = "", path: str = "", *, cache_dir=None, train: int = 0,
         test: int = 0) -> Dataset:
    """Load a zoo dataset (``name``) or an .npz file (``path``); labels become int64 vectors.
    ``train``/``test`` and ``cache_dir`` are for zoo datasets (``ZooDataset.load``)."""
    card = None
    if path:
        arrays, source, pre = _load_npz(path), path, {"source": path,
                                                      "transform": "as stored in the .npz"}
        ds_name = os.path.splitext(os.path.basename(path))[0]
    elif name:
        zoo = get_dataset(name)
        if zoo is None:
            raise DataError("Unknown zoo dataset", name,
                            f"Use one of {', '.join(sorted(DATASETS))} or pass an .npz file")
        arrays = zoo.load(cache_dir=cache_dir, train=train, test=test)
        pre = arrays.pop("preprocessing", {})
        card = arrays.pop("card", None)
        source, ds_name = f"zoo:{name}", name
    else:
        raise DataError("No dataset given", "data.name and data.path are empty",
                        "Pass --data NAME or --data file.npz")
    x = {k: _check_x(arrays[k], f"{source}:{k}") for k in ("x_train", "x_test")}
    y = {k: _labels(arrays[k], f"{source}:{k}") for k in ("y_train", "y_test")}
    for split in ("train", "test"):
        nx, ny = len(x[f"x_{split}"]), len(y[f"y_{split}"])
        if nx == 0:
            raise DataError(f"The {split} split is empty", f"{source}:x_{split} with 0 samples",
                            f"Provide at least one {split} sample")
        if nx != ny:
            raise DataError(f"x_{split} and y_{split} differ in length", f"{nx} vs {ny}",
                            "Give one label per sample")
    if x["x_train"].shape[1:] != x["x_test"].shape[1:]:
        raise DataError("x_train and x_test have different sample shapes",
                        f"{x['x_train'].shape[1:]} vs {x['x_test'].shape[1:]}",
                        "Preprocess both splits the same way")
    return Dataset(ds_name, source, x["x_train"], y["y_train"], x["x_test"], y["y_test"], pre,
                   card)


def _load_npz(path: str) -> dict:
    files.check_file(path, "data", DataError, "data file")
    if not zipfile.is_zipfile(path):
        raise DataError("The data file is not a readable .npz archive", path,
                        "Write it with numpy.savez (x_train, y_train, x_test, y_test)")
    try:
        with zipfile.ZipFile(path) as z:
            files.check_zip(z, path, "data", DataError, "data file", ratio=False)
            members = {n[:-4]: n for n in z.namelist() if n.endswith(".npy")}
            missing = [k for k in REQUIRED_KEYS if k not in members]
            if missing:
                raise DataError("The .npz is missing arrays",
                                f"{path} has {sorted(members)}",
                                f"Save it with {', '.join(REQUIRED_KEYS)} (missing: "
                                f"{', '.join(missing)})")
            for k in REQUIRED_KEYS:
                files.check_npy_member(z, members[k], f"{path}:{k}", DataError)
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in REQUIRED_KEYS}
    except DataError:
        raise
    except ValueError as exc:
        msg = first_line(exc, None)
        if "pickle" in msg.lower():  # object arrays need pickle
            raise DataError("The .npz holds object arrays, which need pickle to load", path,
                            f"Save numeric arrays only ({msg})")
        raise DataError("An array of the .npz cannot be read", f"{path} ({msg[:200]})",
                        "Write it again with numpy.savez")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError,
            NotImplementedError) as exc:
        raise DataError("The data file is not a readable .npz archive", path,
                        f"Write it with numpy.savez ({type(exc).__name__})")


def _check_x(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError("Input data must be numeric", f"{where} has dtype {x.dtype}",
                        "Convert it to float32 (preprocessed as the model expects)")
    if x.ndim < 2:
        raise DataError("Input data needs a batch dimension and at least one feature "
                        "dimension", f"{where} with shape {x.shape}",
                        "Stack samples along axis 0")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0][0])
        raise DataError("Input data contains NaN or infinite values",
                        f"{where}: {int(bad.sum())} values, first in sample {first}",
                        "Clean or impute the data before running")
    return x


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)) or \
                not np.all(y.sum(axis=1) == 1):
            raise DataError("2-D labels must be one-hot rows", f"{where} with shape {y.shape}",
                            "Pass integer class ids (N,) or exact one-hot rows")
        return y.argmax(axis=1).astype(np.int64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError("Labels must be class ids (N,) or one-hot (N, C)",
                        f"{where} with shape {y.shape}", "Reshape the labels")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError("Labels must be whole class ids", f"{where} has non-integer values",
                            "Pass integer class ids 0..C-1")
    elif y.dtype.kind not in "biu":
        raise DataError("Labels must be integer class ids", f"{where} has dtype {y.dtype}",
                        "Encode classes as 0..C-1")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError("Labels must be >= 0", f"{where} min {int(y.min())}",
                        "Encode classes as 0..C-1")
    return y


def validate(ds: Dataset, input_shape: tuple, num_outputs: int, data_ref: str = "") -> None:
    """Check data against the model before any training: shape, then labels vs outputs."""
    ref = data_ref or ds.source
    want = tuple(input_shape[1:])
    got = tuple(ds.x_train.shape[1:])
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
        fix = "Reshape the array"
        if len(got) + 1 == len(want) and want[-1] == 1 and tuple(want[:-1]) == got:
            fix = "Add the channel axis (x[..., None])"
        fmt = lambda s: "(N, " + ", ".join("?" if d is None else str(d) for d in s) + ")"
        raise DataError(f"Input data has shape {fmt(got)} but the model expects {fmt(want)}",
                        f"data={ref}:x_train", fix + " or pass a matching model")
    if num_outputs < 2:
        raise DataError("Only classification models with 2 or more outputs are supported",
                        f"model output size {num_outputs}",
                        "End the model with Dense(num_classes)")
    top = int(max(ds.y_train.max(), ds.y_test.max()))
    if top >= num_outputs:
        raise DataError(f"Labels go up to {top} but the model has {num_outputs} outputs",
                        f"data={ref}:y_train/y_test",
                        f"Use labels 0..{num_outputs - 1} or a model with {top + 1} outputs")


def train_val_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Stratified split of the train split into (train, validation)."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        val_idx.extend(idx[:k])
    mask = np.zeros(len(y), dtype=bool)
    mask[np.asarray(val_idx, dtype=np.int64)] = True
    if not mask.any() or mask.all():
        raise DataError("The train split is too small for a validation split", f"{len(y)} samples",
                        "Add training samples or change data.validation_split")
    return x[~mask], y[~mask], x[mask], y[mask]


def representative_sample(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Random (seeded) samples of the train split for converter calibration."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[: min(count, len(x))]
    return x[np.sort(idx)]
