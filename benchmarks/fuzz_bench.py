"""Fuzz the verifier's loading path with N mutants of a real int8 model (default 10,000).

    python benchmarks/fuzz_bench.py [--mutants 10000] [--model artifacts/digits_cnn/qat_int8.tflite]

Each mutant goes through what `qat verify` does with an untrusted file: the pure-Python
structural pre-check in this process, then load + invoke in the isolated child. Prints how
each ended. "child crashes contained" are mutants that would have crashed this process if the
interpreter ran in it; the parent crash count is 0 by construction of reaching the end.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.errors import ModelFileError  # noqa: E402
from pipeline.tflite.isolated import IsolatedInterpreter  # noqa: E402
from pipeline.tflite.tflite_model import TFLiteFormatError, TFLiteModel  # noqa: E402


def mutate(good: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(good)
    kind = rng.integers(5)
    if kind == 0:
        for _ in range(rng.integers(1, 9)):
            b[rng.integers(len(b))] = rng.integers(256)
    elif kind == 1:
        b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
    elif kind == 2:
        b = b[: rng.integers(len(b))]
    elif kind == 3:
        p = int(rng.integers(0, len(b) - 4))
        b[p: p + 4] = int(rng.integers(0, 2**32, dtype=np.uint64)).to_bytes(4, "little")
    else:  # splice: copy a chunk of the file over another place
        n = int(rng.integers(4, 64))
        src, dst = (int(v) for v in rng.integers(0, len(b) - n, 2))
        b[dst: dst + n] = b[src: src + n]
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=10_000)
    ap.add_argument("--model", default=str(ROOT / "artifacts/digits_cnn/qat_int8.tflite"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = Path(args.model)
    if not path.is_file():
        print(f"error: {path} does not exist; run `make demo` first", file=sys.stderr)
        return 2
    good = path.read_bytes()
    view = TFLiteModel.from_bytes(good)
    shape = [max(1, d) for d in view.inputs()[0].shape]
    x = np.zeros((2, *shape[1:]), np.float32)
    rng = np.random.default_rng(args.seed)
    outcomes = collections.Counter()
    t0 = time.perf_counter()
    with IsolatedInterpreter(timeout=30) as child:
        for _ in range(args.mutants):
            m = mutate(good, rng)
            try:
                TFLiteModel.from_bytes(m)
            except TFLiteFormatError:
                outcomes["rejected by the structural pre-check"] += 1
                continue
            try:
                child.run(m, x, precheck=False)
                outcomes["loaded and ran (harmless change)"] += 1
            except ModelFileError as exc:
                msg = str(exc)
                key = ("child crash contained" if "crashed" in msg else
                       "child timeout contained" if "did not finish" in msg else
                       "interpreter error (clean)")
                outcomes[key] += 1
        restarts = child.restarts
    dt = time.perf_counter() - t0
    print(f"## Fuzz: {args.mutants:,} mutants of {path.name} (seed {args.seed})")
    print("| outcome | mutants |\n|---|---:|")
    for k, v in outcomes.most_common():
        print(f"| {k} | {v:,} |")
    print(f"| **parent crashes** | **0** |")
    print(f"\n{dt:.1f} s ({args.mutants / dt:,.0f} mutants/s), child restarted {restarts} time(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
