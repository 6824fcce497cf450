"""Pipeline benchmark: wall time per stage of the default run, and verifier throughput
batched vs one sample at a time (same model, same data, same process).

    python benchmarks/pipeline_bench.py [--output DIR] [--repeats 21]
    python benchmarks/pipeline_bench.py --tflite artifacts/digits_cnn/qat_int8.tflite  # verifier only

Targets (issue 2, 2-core machine): default run <= 150 s end to end (virtualenv set-up
excluded); batched verification >= 5x faster than one-at-a-time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", help="artifacts root (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=21, help="timed runs per verifier mode")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="the verifier's samples per invoke (default 0: auto, as `qat run`)")
    ap.add_argument("--tflite", help="skip the pipeline run; measure the verifier on this "
                                     "digits .tflite only")
    args = ap.parse_args()

    ok = True
    if args.tflite:
        model = Path(args.tflite)
    else:
        t0 = time.perf_counter()
        from pipeline import config, run as run_mod  # noqa: E402  (timed: part of the run)

        out = args.output or tempfile.mkdtemp(prefix="qat-bench-")
        cfg = config.load("digits_cnn", {"output.dir": out, "qat.verbose": "0"})
        result = run_mod.run(cfg, log=lambda *_: None)
        total = time.perf_counter() - t0
        timings = result.report["timings"]

        print(f"## Pipeline stages (digits_cnn default recipe), exit code {result.exit_code}")
        print("| stage | seconds |\n|---|---:|")
        print(f"| python + imports | {total - timings['total']:.1f} |")
        for stage, sec in timings.items():
            if stage != "total":
                print(f"| {stage} | {sec:.1f} |")
        print(f"| **end to end** | **{total:.1f}** (target <= 150) |")
        ok = total <= 150 and result.exit_code == 0
        model = Path(result.run_dir) / "qat_int8.tflite"

    from pipeline.data import load
    from pipeline.runtime import ModelRunner
    from pipeline.verify import default_workers

    x = load(name="digits").x_test
    workers = default_workers(0)  # what the verify stage uses
    verifier = ModelRunner(model, batch_size=args.batch_size, workers=workers)
    single = ModelRunner(model, batch_size=1)
    sweep = {f"batch {b}, 1 interpreter": ModelRunner(model, batch_size=b)
             for b in (16, 64, 256, len(x))}

    def rate(runner) -> float:
        runner.run(x)  # warm: allocation at this batch
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            runner.run(x)
            times.append(time.perf_counter() - t)
        return len(x) / statistics.median(times)

    # interleave the modes so load changes on a noisy machine hit them alike
    modes = {"one at a time": single, **sweep,
             f"**verifier** (batch {verifier.batch_size} auto, {workers} interpreter(s))":
                 verifier}
    rates = {k: [] for k in modes}
    for _ in range(3):
        for k, r in modes.items():
            rates[k].append(rate(r))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print()
    print(f"## Verifier throughput on {model.name}, {len(x)} test images "
          f"(median of 3 x {args.repeats} runs per mode, interleaved)")
    print("| mode | samples/s | µs per sample | × one at a time |\n|---|---:|---:|---:|")
    base = med["one at a time"]
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} | {1e6 / v:.1f} | {v / base:.1f} |")
    ratio = list(med.values())[-1] / base
    print(f"\nbatched verifier vs one at a time: **{ratio:.1f}x** (target >= 5x)")
    ok = ok and ratio >= 5
    print(f"\nresult: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
