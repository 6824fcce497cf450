"""Pipeline benchmark: wall time per stage of the default run, and verifier throughput
batched vs one sample at a time (same model, same data, same process).

    python benchmarks/pipeline_bench.py [--output DIR] [--repeats 21]
    python benchmarks/pipeline_bench.py --tflite artifacts/digits_cnn/qat_int8.tflite  # verifier only

Target (2-core machine): default run <= 150 s end to end (virtualenv set-up excluded).
Batched vs one-at-a-time verification has no fixed target: the model's own compute bounds
the ratio (on digits 2.4-3.9x on 2 cores), so the benchmark prints that zero-overhead bound
and how close the verifier gets to it.
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
        from pipeline.stages import config, run as run_mod  # lazy: timed as part of the run

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

    from pipeline.stages.data import load  # lazy: after the timed run, outside its total
    from pipeline.stages.verify import default_workers  # lazy: after the timed run
    from pipeline.tflite.runtime import ModelRunner, make_interpreter  # lazy: after the timed run

    x = load(name="digits").x_test
    workers = default_workers(0)  # what the verify stage uses
    verifier = ModelRunner(model, batch_size=args.batch_size, workers=workers)
    single = ModelRunner(model, batch_size=1)
    sweep = {f"batch {b}, 1 interpreter": ModelRunner(model, batch_size=b)
             for b in (16, 64, 256, len(x))}

    # The least any one-sample-per-invoke loop in Python can cost: pre-quantized int8 inputs,
    # set_tensor / invoke / get_tensor per sample, nothing else.
    bare = make_interpreter(model.read_bytes())
    bare.allocate_tensors()
    bin_, bout = bare.get_input_details()[0]["index"], bare.get_output_details()[0]["index"]
    xq = ModelRunner.prepare_input(single.inputs[0], x)

    def bare_loop():
        for k in range(len(xq)):
            bare.set_tensor(bin_, xq[k:k + 1])
            bare.invoke()
            bare.get_tensor(bout)

    # The model's own compute: invoke alone at the verifier's batch, one interpreter, one
    # thread. No batching scheme can go below this divided by the cores.
    floor = make_interpreter(model.read_bytes(), num_threads=1)
    b = verifier.batch_size
    floor.resize_tensor_input(bin_, [b, *xq.shape[1:]])
    floor.allocate_tensors()
    floor.set_tensor(bin_, xq[:b])
    invokes = -(-len(x) // b)

    def floor_run():
        for _ in range(invokes):
            floor.invoke()

    def rate(fn) -> float:
        fn()  # warm: allocation at this batch
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return len(x) / statistics.median(times)

    # interleave the modes so load changes on a noisy machine hit them alike
    modes = {"one at a time (verifier, batch 1)": lambda: single.run(x),
             "one at a time, bare loop (pre-quantized, nothing else)": bare_loop,
             **{k: (lambda r=r: r.run(x)) for k, r in sweep.items()},
             f"invoke only, batch {b}, 1 thread (the model's compute)": floor_run,
             f"**verifier** (batch {b}{' auto' if not args.batch_size else ''}, {workers} "
             f"interpreter(s))": lambda: verifier.run(x)}
    rates = {k: [] for k in modes}
    for _ in range(3):
        for k, fn in modes.items():
            rates[k].append(rate(fn))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print()
    print(f"## Verifier throughput on {model.name}, {len(x)} test images "
          f"(median of 3 x {args.repeats} runs per mode, interleaved)")
    print("| mode | samples/s | µs per sample | × one at a time |\n|---|---:|---:|---:|")
    names = list(med)
    base, bare_rate, floor_rate, batched = (med[names[0]], med[names[1]], med[names[-2]],
                                             med[names[-1]])
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} | {1e6 / v:.1f} | {v / base:.1f} |")
    ratio = batched / base
    bound = floor_rate * workers  # batched throughput with zero overhead on every core
    print(f"\nbatched verifier vs one at a time (verifier, batch 1): **{ratio:.1f}x** "
          f"; vs the bare one-sample loop: {batched / bare_rate:.1f}x")
    print(f"ceiling on this machine: the model's compute ({1e6 / floor_rate:.1f} µs per sample "
          f"batched, one thread) split over {workers} core(s) allows at most "
          f"{bound / base:.1f}x over the verifier's one-at-a-time mode and {bound / bare_rate:.1f}x "
          f"over the bare loop; the verifier reaches {batched / bound:.0%} of that bound")
    print(f"\nresult: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
