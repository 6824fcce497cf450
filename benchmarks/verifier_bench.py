"""Verifier throughput vs the bare batched LiteRT interpreter, and the cost of isolation.

    python benchmarks/verifier_bench.py [--model artifacts/digits_cnn/qat_int8.tflite]

- bare: set_tensor / invoke / get_tensor over pre-quantized int8 batches, nothing else;
- verifier: pipeline.tflite.runtime.ModelRunner on float inputs (quantize, batch, pad, dequantize),
  with one interpreter and with the verify stage's default (one per core);
- isolation: the same run through the child-process interpreter, first call (spawn + import
  + load) and warm calls.
Target: verifier >= 0.8x bare on the same model and batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.stages.data import load  # noqa: E402
from pipeline.tflite.isolated import IsolatedInterpreter  # noqa: E402
from pipeline.tflite.runtime import ModelRunner, make_interpreter  # noqa: E402
from pipeline.stages.verify import default_workers  # noqa: E402


def median_rate(fn, n: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "artifacts/digits_cnn/qat_int8.tflite"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    path = Path(args.model)
    if not path.is_file():
        print(f"error: {path} does not exist; run `make demo` first", file=sys.stderr)
        return 2
    content = path.read_bytes()
    ds = load(name="digits")
    x = np.concatenate([ds.x_test] * 4)  # 1,800 images
    b = args.batch_size

    it = make_interpreter(content)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], [b, *inp["shape"][1:]])
    it.allocate_tensors()
    scale, zp = inp["quantization"]
    xq = np.clip(np.round(x / scale) + zp, -128, 127).astype(inp["dtype"])
    n_full = (len(xq) // b) * b  # the bare loop runs whole batches only

    def bare():
        for s in range(0, n_full, b):
            it.set_tensor(inp["index"], xq[s: s + b])
            it.invoke()
            it.get_tensor(out["index"])

    one = ModelRunner(content, batch_size=b)
    workers = default_workers(0)
    many = ModelRunner(content, batch_size=b, workers=workers)
    r_bare = median_rate(bare, n_full, args.repeats)
    r_one = median_rate(lambda: one.run(x[:n_full]), n_full, args.repeats)
    r_many = median_rate(lambda: many.run(x[:n_full]), n_full, args.repeats)

    print(f"## Verifier vs bare interpreter: {path.name}, batch {b}, {n_full:,} images, "
          f"median of {args.repeats}")
    print("| runner | images/s | vs bare |\n|---|---:|---:|")
    print(f"| bare LiteRT interpreter (pre-quantized input) | {r_bare:,.0f} | 1.00x |")
    print(f"| verifier, 1 interpreter (quantize + dequantize) | {r_one:,.0f} | "
          f"{r_one / r_bare:.2f}x |")
    print(f"| verifier, {workers} interpreters (verify default) | {r_many:,.0f} | "
          f"{r_many / r_bare:.2f}x |")

    cold = []
    for _ in range(3):
        t = time.perf_counter()
        with IsolatedInterpreter() as child:
            child.run(content, x[:n_full], batch_size=b)
        cold.append(time.perf_counter() - t)
    with IsolatedInterpreter() as child:
        child.run(content, x[:8])
        warm = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            child.run(content, x[:n_full], batch_size=b)
            warm.append(time.perf_counter() - t)
    t_in = n_full / r_one
    print(f"\n## Cost of child-process isolation ({n_full:,} images)")
    print("| mode | seconds per model |\n|---|---:|")
    print(f"| in-process (verifier, 1 interpreter) | {t_in:.3f} |")
    print(f"| isolated, new child (spawn + import + load + run) | {statistics.median(cold):.3f} |")
    print(f"| isolated, warm child (load + run + transfer) | {statistics.median(warm):.3f} |")
    print(f"\nisolation overhead per model: {statistics.median(cold) - t_in:.3f} s cold, "
          f"{statistics.median(warm) - t_in:.3f} s warm")
    ok = r_one / r_bare >= 0.8
    print(f"\nresult: {'PASS' if ok else 'FAIL'} (verifier >= 0.8x bare)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
