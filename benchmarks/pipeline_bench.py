"""Pipeline benchmark: wall time per stage of the default run, and verifier throughput
batched vs one sample at a time (same model, same data, same process).

    python benchmarks/pipeline_bench.py [--output DIR] [--repeats 5]

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
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

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

    from pipeline.data import load
    from pipeline.runtime import ModelRunner
    from pipeline.verify import default_workers

    ds = load(name="digits")
    x = ds.x_test
    model = Path(result.run_dir) / "qat_int8.tflite"
    workers = default_workers(0)  # what the verify stage uses
    batched = ModelRunner(model, batch_size=args.batch_size, workers=workers)
    single = ModelRunner(model, batch_size=1)
    batched.run(x[:8])
    single.run(x[:8])  # warm both (allocation)

    def rate(runner) -> float:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            runner.run(x)
            times.append(time.perf_counter() - t)
        return len(x) / statistics.median(times)

    r_batched, r_single = rate(batched), rate(single)
    print()
    print(f"## Verifier throughput on qat_int8.tflite, {len(x)} test images, "
          f"median of {args.repeats}")
    print("| mode | samples/s |\n|---|---:|")
    print(f"| one at a time | {r_single:,.0f} |")
    print(f"| batched ({args.batch_size}, {workers} interpreter(s)) | {r_batched:,.0f} |")
    ratio = r_batched / r_single
    print(f"| **speed-up** | **{ratio:.1f}x** (target >= 5x) |")
    ok = total <= 150 and ratio >= 5 and result.exit_code == 0
    print(f"\nresult: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
