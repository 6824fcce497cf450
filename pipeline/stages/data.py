"""Datasets: a zoo dataset by name or an .npz file, validated against the model before training.

.npz format (``np.savez``): ``x_train``, ``y_train``, ``x_test``, ``y_test``. ``x_*`` numeric
arrays shaped like the model input with the batch first, e.g. (N, 8, 8, 1), already preprocessed
as the model expects. A model with several inputs takes one array per input, named
``x_train.<input name>`` / ``x_test.<input name>`` (in memory: ``x_train`` a dict
{input name: array}); inputs are matched by name, never by position. ``y_*`` by task
(``data.task``, pipeline/stages/metrics.py): classification - integer class labels (N,) or
(N, 1), or one-hot (N, C); sequence - integer token targets (N, T) for per-token outputs
(N, T, V); regression - float targets, as many values per sample as the model outputs. Object
arrays are refused (they would need pickle, which runs code).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from models import DATASETS, get_dataset
from pipeline.core import files
from pipeline.core.errors import DataError, first_line
from pipeline.stages import targets

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str
    x_train: np.ndarray | dict
    y_train: np.ndarray
    x_test: np.ndarray | dict
    y_test: np.ndarray
    preprocessing: dict = field(default_factory=dict)
    card: dict | None = None  # a generated zoo dataset's card (models/datacache.py)
    task: str = "classification"  # resolved by prepare() (metrics.TASKS)

    @property
    def num_classes(self) -> int:
        if self.task == "regression":
            return 0
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    def summary(self) -> dict:
        doc = {"name": self.name, "source": self.source,
               "train": count(self.x_train), "test": count(self.x_test),
               "input_shape": sample_shapes(self.x_train),
               "classes": self.num_classes, "preprocessing": self.preprocessing}
        if self.task != "classification":
            doc.update(task=self.task, target_shape=list(self.y_test.shape[1:]))
        return doc


# -- inputs that are one array or {input name: array} -----------------------------------------
def count(x) -> int:
    return int(len(next(iter(x.values())))) if isinstance(x, dict) else int(len(x))


def take(x, idx):
    """Rows ``idx`` of an array or of every array of a dict."""
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def sample_shapes(x) -> list | dict:
    return {k: list(v.shape[1:]) for k, v in x.items()} if isinstance(x, dict) \
        else list(x.shape[1:])


def load(name: str = "", path: str = "", *, cache_dir=None, train: int = 0,
         test: int = 0, task: str = "classification") -> Dataset:
    """Load a zoo dataset (``name``) or an .npz file (``path``). ``task`` (metrics.TASKS) says
    how targets are read: classification labels become int64 vectors; "auto" keeps them as
    stored until ``prepare`` sees the model. ``train``/``test`` and ``cache_dir`` are for zoo
    datasets (``ZooDataset.load``)."""
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
    x = {k: _check_inputs(arrays[k], f"{source}:{k}") for k in ("x_train", "x_test")}
    y = {k: targets.read(arrays[k], f"{source}:{k}", task) for k in ("y_train", "y_test")}
    for split in ("train", "test"):
        nx, ny = count(x[f"x_{split}"]), len(y[f"y_{split}"])
        if nx == 0:
            raise DataError(f"The {split} split is empty", f"{source}:x_{split} with 0 samples",
                            f"Provide at least one {split} sample")
        if nx != ny:
            raise DataError(f"x_{split} and y_{split} differ in length", f"{nx} vs {ny}",
                            "Give one label per sample")
    if sample_shapes(x["x_train"]) != sample_shapes(x["x_test"]):
        raise DataError("x_train and x_test have different sample shapes",
                        f"{sample_shapes(x['x_train'])} vs {sample_shapes(x['x_test'])}",
                        "Preprocess both splits the same way")
    resolved = task if task in ("classification", "sequence", "regression") else "classification"
    return Dataset(ds_name, source, x["x_train"], y["y_train"], x["x_test"], y["y_test"], pre,
                   card, resolved)


def _npz_keys(members: dict, path: str) -> list[str]:
    """The arrays to read: y_train, y_test, and x_train / x_test or their x_*.<input> parts."""
    keys = ["y_train", "y_test"]
    for split in ("x_train", "x_test"):
        parts = sorted(k for k in members if k.startswith(split + "."))
        if split in members and parts:
            raise DataError(f"The .npz has both {split} and {split}.<input> arrays",
                            f"{path}: {split}, {', '.join(parts)}",
                            f"Keep {split} for a single-input model, or only {split}.<input "
                            "name> arrays for a model with several inputs")
        keys += parts or [split]
    missing = [k for k in REQUIRED_KEYS if k not in members and
               not any(m.startswith(k + ".") for m in members)]
    if missing:
        raise DataError("The .npz is missing arrays", f"{path} has {sorted(members)}",
                        f"Save it with {', '.join(REQUIRED_KEYS)} (missing: "
                        f"{', '.join(missing)})")
    return keys


def _load_npz(path: str) -> dict:
    files.check_file(path, "data", DataError, "data file")
    if not zipfile.is_zipfile(path):
        raise DataError("The data file is not a readable .npz archive", path,
                        "Write it with numpy.savez (x_train, y_train, x_test, y_test)")
    try:
        with zipfile.ZipFile(path) as z:
            files.check_zip(z, path, "data", DataError, "data file", ratio=False)
            members = {n[:-4]: n for n in z.namelist() if n.endswith(".npy")}
            keys = _npz_keys(members, path)
            for k in keys:
                files.check_npy_member(z, members[k], f"{path}:{k}", DataError)
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in keys}
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
    out = {}
    for k, v in raw.items():  # x_train.tokens -> out["x_train"]["tokens"]
        split, _, inp = k.partition(".")
        if inp:
            out.setdefault(split, {})[inp] = v
        else:
            out[k] = v
    return out


def _check_inputs(x, where: str):
    if isinstance(x, dict):
        if not x:
            raise DataError("The input dict is empty", where, "Give one array per model input")
        out = {str(k): _check_x(v, f"{where}.{k}") for k, v in x.items()}
        lengths = {k: len(v) for k, v in out.items()}
        if len(set(lengths.values())) > 1:
            raise DataError("The input arrays differ in length", f"{where}: {lengths}",
                            "Give every input the same number of samples")
        return out
    return _check_x(np.asarray(x), where)


def _check_x(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x)
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


def prepare(ds: Dataset, model_inputs: list[tuple], output_shape: tuple,
            task: str = "auto", data_ref: str = "") -> Dataset:
    """Check the data against the model before any training - the inputs by name and shape,
    then the targets against the output - and decide the task (``task`` "auto": from the
    output's rank and the targets, targets.resolve). ``model_inputs``: (name, shape[, dtype])
    per model input; inputs of an integer dtype (token ids) get int32 arrays. Returns the
    dataset with its inputs keyed like the model's, its targets in the task's form and
    ``task`` set."""
    ref = data_ref or ds.source
    _check_input_shapes(ds.x_train, model_inputs, ref)
    kind = targets.resolve(task, ds.y_train, tuple(output_shape), ref)
    y_tr = targets.convert(kind, ds.y_train, tuple(output_shape), f"{ref}:y_train")
    y_te = targets.convert(kind, ds.y_test, tuple(output_shape), f"{ref}:y_test")
    x_tr, x_te = (_as_model_inputs(x, model_inputs, f"{ref}:{k}")
                  for x, k in ((ds.x_train, "x_train"), (ds.x_test, "x_test")))
    return dataclasses.replace(ds, x_train=x_tr, x_test=x_te, y_train=y_tr, y_test=y_te,
                               task=kind)


def _as_model_inputs(x, model_inputs: list[tuple], where: str):
    """A one-entry dict for a single-input model becomes its array; integer model inputs
    (token ids, positions) get whole-number int32 arrays."""
    if isinstance(x, dict) and len(model_inputs) == 1 and len(x) == 1:
        x = next(iter(x.values()))
    dtypes = {m[0]: (m[2] if len(m) > 2 else None) for m in model_inputs}

    def cast(name, arr, dtype):
        if dtype is None or np.dtype(dtype).kind not in "iu":
            return arr
        if not np.all(arr == np.round(arr)) or (len(arr) and arr.min() < 0):
            raise DataError(f"Input {name or 'x'} feeds integer ids but holds fractional or "
                            "negative values", f"{where}.{name}" if name else where,
                            "Pass the token / position ids as whole numbers >= 0")
        return arr.astype(np.int32)
    if isinstance(x, dict):
        return {k: cast(k, v, dtypes.get(k)) for k, v in x.items()}
    return cast("", x, dtypes.get(model_inputs[0][0]))


def validate(ds: Dataset, input_shape: tuple, num_outputs: int, data_ref: str = "") -> Dataset:
    """A classifier's data against its single input and (N, num_outputs) output."""
    return prepare(ds, [("", tuple(input_shape))], (None, num_outputs), "classification",
                   data_ref)


def _fmt(s) -> str:
    return "(N, " + ", ".join("?" if d is None or d < 0 else str(d) for d in s) + ")"


def _check_shape(got: tuple, want: tuple, where: str, name: str = "") -> None:
    if len(want) != len(got) or any(w is not None and w >= 0 and w != g
                                    for w, g in zip(want, got)):
        fix = "Reshape the array"
        if len(got) + 1 == len(want) and want[-1] == 1 and tuple(want[:-1]) == got:
            fix = "Add the channel axis (x[..., None])"
        what = f"input {name!r}" if name else "Input data"
        raise DataError(f"{what} has shape {_fmt(got)} but the model expects {_fmt(want)}",
                        where, fix + " or pass a matching model")


def _check_input_shapes(x, model_inputs: list[tuple], ref: str) -> None:
    """x (an array, or {input name: array}) against the model's inputs, by name."""
    model_inputs = [(m[0], m[1]) for m in model_inputs]
    if len(model_inputs) == 1 and not isinstance(x, dict):
        _check_shape(tuple(x.shape[1:]), tuple(model_inputs[0][1][1:]), f"data={ref}:x_train")
        return
    names = [n for n, _ in model_inputs]
    expected = ", ".join(f"{n} {_fmt(s[1:])}" for n, s in model_inputs)
    if not isinstance(x, dict):
        raise DataError(f"The model has {len(names)} inputs but the data holds one array",
                        f"data={ref}:x_train with shape {x.shape}",
                        f"Pass x_train as a dict, or x_train.<input> arrays in the .npz, for "
                        f"the inputs {expected}")
    if len(model_inputs) == 1 and len(x) == 1:
        x = {names[0]: next(iter(x.values()))}
    missing = [n for n in names if n not in x]
    extra = [k for k in x if k not in names]
    if missing or extra:
        got = ", ".join(f"{k} {_fmt(v.shape[1:])}" for k, v in x.items())
        raise DataError(f"The data's inputs do not match the model's by name (missing: "
                        f"{', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'})",
                        f"data={ref}:x_train has {got}", f"Name the arrays after the model "
                        f"inputs: {expected}")
    for n, shape in model_inputs:
        _check_shape(tuple(x[n].shape[1:]), tuple(shape[1:]), f"data={ref}:x_train.{n}", n)


def train_val_split(x, y: np.ndarray, fraction: float, seed: int):
    """The train split cut into (train, validation): stratified by class for class labels
    (1-D targets), a seeded random cut otherwise (token targets, regression)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    if y.ndim == 1 and y.dtype.kind in "iu":
        val_idx = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            k = int(round(len(idx) * fraction))
            val_idx.extend(idx[:k])
        mask[np.asarray(val_idx, dtype=np.int64)] = True
    else:
        mask[rng.permutation(len(y))[:int(round(len(y) * fraction))]] = True
    if not mask.any() or mask.all():
        raise DataError("The train split is too small for a validation split", f"{len(y)} samples",
                        "Add training samples or change data.validation_split")
    return take(x, ~mask), y[~mask], take(x, mask), y[mask]


def representative_sample(x, count_: int, seed: int):
    """Random (seeded) samples of the train split for converter calibration (an array, or
    {input name: array} with the same rows of every input)."""
    rng = np.random.default_rng(seed)
    n = count(x)
    idx = rng.permutation(n)[: min(count_, n)]
    return take(x, np.sort(idx))
