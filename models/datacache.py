"""Generated zoo datasets, cached by content hash.

A zoo dataset that is generated (rendered, synthesised) rather than shipped is built once per
set of parameters and kept under the artifacts root, in ``<root>/.data/``:

    NAME-<hash>.npz          x_train, y_train, x_test, y_test (no pickle)
    NAME-<hash>.card.json    the data set card: source, classes, sizes, splits, assets, licences

``<hash>`` is the sha256 (first 16 hex digits) of the generator's name, its version, its
parameters and the versions of the packages whose assets it uses, so a changed generator or
asset package gives a new file instead of a stale one. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from importlib import metadata as md
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.artifacts import atomic_write_bytes
from pipeline.core.errors import DataError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def default_root() -> Path:
    """Where generated data lives when no run directory says otherwise."""
    return Path(os.environ.get("QAT_DATA_CACHE") or Path("artifacts") / ".data")


def package_versions(dists) -> dict:
    out = {}
    for d in dists:
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = None
    return out


def key(name: str, version: int, params: dict, assets: dict) -> str:
    blob = json.dumps({"name": name, "version": version, "params": params, "assets": assets},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached(name: str, version: int, params: dict, asset_packages, generate: Callable[[], tuple],
           root: str | os.PathLike | None = None, log=None) -> tuple[dict, dict]:
    """(arrays, card): from ``root`` if this exact generation is cached, else ``generate()``
    (which returns (arrays, card)) and cache it."""
    assets = package_versions(asset_packages)
    missing = [d for d, v in assets.items() if v is None]
    if missing:
        raise DataError(f"The {name} dataset is generated from installed packages, missing here",
                        ", ".join(missing),
                        "pip install 'qat-deploy[zoo]' (in a checkout: make venv)")
    h = key(name, version, params, assets)
    root = Path(root) if root is not None else default_root()
    npz, card_path = root / f"{name}-{h}.npz", root / f"{name}-{h}.card.json"
    if npz.is_file() and card_path.is_file():
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ARRAYS}
        return arrays, json.loads(card_path.read_text())
    if log:
        log(f"generating the {name} dataset ({h}) into {root}")
    arrays, card = generate()
    card = {**card, "generator": {"name": name, "version": version, "params": params,
                                  "hash": h, "asset_packages": assets},
            "sizes": {k: int(len(arrays[k])) for k in ("x_train", "x_test")}}
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **{k: arrays[k] for k in ARRAYS})
    atomic_write_bytes(npz, buf.getvalue())
    atomic_write_bytes(card_path, (json.dumps(card, indent=2) + "\n").encode())
    return arrays, card
