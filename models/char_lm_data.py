"""stdlib_text: CPython's standard-library source as character windows for a language model.

The corpus is the ``*.py`` source of the standard library of the interpreter that runs the
pipeline (``sysconfig.get_paths()["stdlib"]``; nothing is downloaded): every file under it, in
sorted relative-path order, except

- test suites: any path with a directory named ``test``, ``tests`` or ``idle_test`` (the
  suites are most of the library's bytes and very repetitive; the model learns library code);
- installed packages: ``site-packages`` / ``dist-packages`` (not the standard library).

Tokens are characters (Unicode code points of the UTF-8 text) mapped to VOCAB ids: 0 for any
character outside the table ("other": about 800 of 12 million characters, mostly typographic
quotes), 1 tab, 2 newline, 3..97 the printable ASCII characters space .. '~' (id =
ord(c) - 29). A phone reproduces it with the table in ``preprocessing["vocab"]``.

Honest split, by file: a file is in the test split when the first 8 bytes of
sha256(f"{SPLIT_SEED}:{relative path}") read as a big-endian integer are below
TEST_SHARE x 2^64 (about 10 % of the files), otherwise in train; no test character is in any
training window. Each split's files are concatenated (sorted order) into one character stream
and cut into windows of WINDOW + 1 characters starting every STRIDE (= WINDOW) characters:
x = the first WINDOW ids, y = the next-character targets (the window shifted by one). The
windows of each split are shuffled with a seeded permutation (WINDOW_SEED) and the first
``train`` / ``test`` of them kept.

The model takes two int32 inputs of shape (batch, WINDOW): ``tokens`` and ``positions``
(0..WINDOW-1 in every row); ``x_*`` are dicts {"tokens", "positions"}, ``y_*`` (N, WINDOW)
int32. The cache key (models/datacache.py) includes the Python version and a sha256 of every
selected file's path and bytes, so another interpreter's library gives another dataset.
Licence: the Python Software Foundation License (the library's LICENSE.txt).
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from pathlib import Path

import numpy as np

from models import datacache
from pipeline.core.errors import DataError

DATASET = "stdlib_text"
VERSION = 1
WINDOW = 64                   # T: tokens per window, the model's sequence length
STRIDE = WINDOW               # a window starts every STRIDE characters (targets do not repeat)
TEST_SHARE = 0.1              # share of files in the test split
SPLIT_SEED = 20260            # the file split's hash salt
WINDOW_SEED = 20261           # the windows' shuffle
TRAIN, TEST = 24000, 2000     # windows kept by default (of 161,676 / 27,655 here, Python 3.11)
EXCLUDED_DIRS = ("test", "tests", "idle_test", "site-packages", "dist-packages")
OTHER, TAB, NEWLINE = 0, 1, 2
FIRST_PRINTABLE = 3           # id of ' ' (ord 32); '~' (ord 126) is 97
VOCAB = FIRST_PRINTABLE + 127 - 32
VOCAB_TABLE = ["<other>", "\t", "\n"] + [chr(c) for c in range(32, 127)]
PREPROCESSING = {
    "source": "CPython's standard-library *.py source of the interpreter that built the "
              "dataset (models/char_lm_data.py); test suites and site-packages excluded",
    "transform": "decode the text as UTF-8; each character (code point) -> its index in "
                 "'vocab' (tab 1, newline 2, ' '..'~' 3..97, id = ord(c) - 29); any other "
                 "character -> 0 ('<other>')",
    "vocab": VOCAB_TABLE,
    "unknown_id": OTHER,
    "window": WINDOW,
    "inputs": {"tokens": f"int32 (batch, {WINDOW}): character ids",
               "positions": f"int32 (batch, {WINDOW}): 0..{WINDOW - 1} in every row"},
    "labels": f"int32 (batch, {WINDOW}): the id of the next character at each position",
    "split": f"by file: sha256('{SPLIT_SEED}:' + relative path) below {TEST_SHARE:.0%} of "
             "2^64 -> test",
}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path | None = None) -> list[str]:
    """The corpus: relative POSIX paths of the selected *.py files, sorted."""
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise DataError("The standard library's source directory does not exist", root,
                        "Run with a CPython whose Lib/ sources are installed (not a "
                        "zip-only or stripped build)")
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if p.is_file() and not set(rel.parts[:-1]) & set(EXCLUDED_DIRS):
            out.append(rel.as_posix())
    if not out:
        raise DataError("No *.py files found in the standard library", root,
                        "Run with a CPython that ships its library as .py sources")
    return sorted(out)


def is_test_file(rel: str) -> bool:
    h = hashlib.sha256(f"{SPLIT_SEED}:{rel}".encode()).digest()
    return int.from_bytes(h[:8], "big") < int(TEST_SHARE * 2 ** 64)


def encode(text: str) -> np.ndarray:
    """Characters -> ids (uint8, VOCAB values), the table in PREPROCESSING."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    ids = np.full(codes.shape, OTHER, np.uint8)
    printable = (codes >= 32) & (codes < 127)
    ids[printable] = (codes[printable] - 32 + FIRST_PRINTABLE).astype(np.uint8)
    ids[codes == 9], ids[codes == 10] = TAB, NEWLINE
    return ids


def decode(ids) -> str:
    """Ids -> text; '<other>' becomes U+FFFD (the replacement character)."""
    return "".join("\ufffd" if int(i) == OTHER else VOCAB_TABLE[int(i)] for i in ids)


def read_corpus(root: Path | None = None) -> tuple[dict, dict]:
    """({split: [(relative path, text)]}, stats) for the selected files."""
    root = Path(root) if root is not None else stdlib_root()
    splits: dict = {"train": [], "test": []}
    digest = hashlib.sha256()
    for rel in source_files(root):
        data = (root / rel).read_bytes()
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        splits["test" if is_test_file(rel) else "train"].append(
            (rel, data.decode("utf-8", errors="replace")))
    return splits, {"sha256": digest.hexdigest()}


def windows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int32 (n, WINDOW): windows starting every STRIDE ids, y = x shifted by one."""
    if len(ids) < WINDOW + 1:
        return np.zeros((0, WINDOW), np.int32), np.zeros((0, WINDOW), np.int32)
    w = np.lib.stride_tricks.sliding_window_view(ids, WINDOW + 1)[::STRIDE]
    return w[:, :-1].astype(np.int32), w[:, 1:].astype(np.int32)


def positions(n: int) -> np.ndarray:
    return np.tile(np.arange(WINDOW, dtype=np.int32), (n, 1))


def load_dataset(*, cache_dir=None, train: int = 0, test: int = 0) -> dict:
    """The stdlib_text windows, built once per size and interpreter and cached."""
    n_train, n_test = (train or TRAIN), (test or TEST)
    root = stdlib_root()
    splits, stats = read_corpus(root)
    params = {"train": n_train, "test": n_test, "window": WINDOW, "stride": STRIDE,
              "test_share": TEST_SHARE, "split_seed": SPLIT_SEED, "window_seed": WINDOW_SEED,
              "excluded_dirs": list(EXCLUDED_DIRS), "python": platform.python_version(),
              "corpus_sha256": stats["sha256"]}
    arrays, card_ = datacache.cached(DATASET, VERSION, params, [],
                                     lambda: generate(n_train, n_test, splits, root),
                                     root=cache_dir)
    out = {"preprocessing": PREPROCESSING, "card": card_}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"].astype(np.int32)
        out[f"x_{split}"] = {"tokens": x, "positions": positions(len(x))}
        out[f"y_{split}"] = arrays[f"y_{split}"].astype(np.int32)
    return out


def generate(n_train: int, n_test: int, splits: dict | None = None,
             root: Path | None = None) -> tuple[dict, dict]:
    """(arrays, card): x_* are the token windows (uint8 ids), y_* the targets (uint8)."""
    root = Path(root) if root is not None else stdlib_root()
    if splits is None:
        splits, _ = read_corpus(root)
    out, stats = {}, {}
    rng = np.random.default_rng(WINDOW_SEED)
    for split, want in (("train", n_train), ("test", n_test)):
        ids = encode("".join(text for _, text in splits[split]))
        x, y = windows(ids)
        if want > len(x):
            raise DataError(f"The {split} split has fewer windows than asked for",
                            f"{want} asked, {len(x)} available",
                            f"Ask for at most {len(x)} (data.{split}_samples)")
        keep = rng.permutation(len(x))[:want]
        out[f"x_{split}"], out[f"y_{split}"] = x[keep].astype(np.uint8), y[keep].astype(np.uint8)
        stats[split] = {"files": len(splits[split]), "windows_available": int(len(x)),
                        "windows": int(want),
                        "bytes": sum(len(t.encode("utf-8")) for _, t in splits[split]),
                        "characters": int(len(ids)), "other_characters": int(np.sum(ids == 0))}
    return out, card(splits, stats, root)


def card(splits: dict, stats: dict, root: Path) -> dict:
    return {
        "source": f"the *.py files of CPython {platform.python_version()}'s standard library "
                  f"({platform.python_implementation()}, {root}), test suites and installed "
                  "packages excluded",
        "python": platform.python_version(),
        "excluded_dirs": list(EXCLUDED_DIRS),
        "tokens": {"kind": "characters", "vocab": VOCAB, "table": VOCAB_TABLE,
                   "unknown_id": OTHER},
        "windows": {"length": WINDOW, "stride": STRIDE,
                    "target": "the next character at every position"},
        "splits": {**stats, "rule": PREPROCESSING["split"], "disjoint": "by file: no test "
                   "file's text is in any training window (files repeat some passages, e.g. "
                   "the code-page tables of encodings/*.py)",
                   "test_files": [rel for rel, _ in splits["test"]]},
        "licence": "Python Software Foundation License Version 2 (the standard library's "
                   f"LICENSE.txt{' in ' + str(root) if (root / 'LICENSE.txt').is_file() else ''})",
    }
