"""Coverage benchmark: every tf_keras.applications architecture (weights=None, small input),
and the same list built in Keras 3 and saved as .keras, through the QAT path:

    random images through the architecture's preprocess_input; BatchNormalization statistics
    set from them (an untrained net's output is otherwise constant) -> annotate (with
    fallbacks) -> activation ranges from the images -> 4 QAT steps -> full-int8 .tflite ->
    Keras QAT vs .tflite on 32 other random
    images: top-1 agreement (and how many classes the Keras model predicted at all), mean
    error in LSB of the logits' scale, SQNR

    python benchmarks/coverage.py [--only MobileNetV2,ResNet50] [--keras 2|3|both] [--jobs 2]
                                  [--json rows.json]
    python benchmarks/coverage.py --merge rows.json more-rows.json   # one table from saved rows

Each architecture runs in its own process (TensorFlow's memory is returned, a crash is a
row). Prints a Markdown table; target: every row annotates and converts to full-int8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> input side (each architecture's minimum or a small size it accepts)
ARCHS = {
    "MobileNet": 64, "MobileNetV2": 64, "MobileNetV3Small": 64, "MobileNetV3Large": 64,
    "EfficientNetB0": 64, "EfficientNetV2B0": 64, "ResNet50": 64, "ResNet50V2": 64,
    "DenseNet121": 64, "NASNetMobile": 64, "Xception": 71, "InceptionV3": 75,
    "ConvNeXtTiny": 64, "RegNetX002": 64,
}
CLASSES = 10
# name -> the keras.applications module holding its preprocess_input: random "images" in
# [0, 255] go through the architecture's own preprocessing, as real photos would (raw 0..255
# into a model that expects [-1, 1] saturates every ReLU6 and makes the output constant).
PREPROCESS = {
    "MobileNet": "mobilenet", "MobileNetV2": "mobilenet_v2", "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3", "EfficientNetB0": "efficientnet",
    "EfficientNetV2B0": "efficientnet_v2", "ResNet50": "resnet50", "ResNet50V2": "resnet_v2",
    "DenseNet121": "densenet", "NASNetMobile": "nasnet", "Xception": "xception",
    "InceptionV3": "inception_v3", "ConvNeXtTiny": "convnext", "RegNetX002": "regnet",
}


def one(arch: str, keras_major: int, out: str) -> None:
    """Child process: run one architecture, write a JSON row to ``out``."""
    import numpy as np

    from pipeline.stages import annotate, convert

    from pipeline.core import keras_env

    from pipeline.keras import ranges
    from pipeline.core.records import Variant
    from pipeline.tflite.runtime import ModelRunner

    row = {"arch": arch, "keras": keras_major, "ok": False}
    t0 = time.perf_counter()
    try:
        env = keras_env.load()
        keras_env.set_seed(0)
        side = ARCHS[arch]
        shape = (side, side, 3)
        if keras_major == 3:
            from pipeline.keras import keras3

            k3 = keras_env.load_keras3()
            if not hasattr(k3.applications, arch):
                row.update(skipped=f"not in keras.applications {k3.__version__}")
                raise LookupError(row["skipped"])
            # logits out (no softmax): agreement and LSB then measure the classifier itself
            m3 = getattr(k3.applications, arch)(weights=None, input_shape=shape,
                                                classes=CLASSES, classifier_activation=None)
            path = Path(tempfile.mkdtemp()) / f"{arch}.keras"
            m3.save(path)
            t = keras3.translate_keras3_file(str(path))
            model = t.model
            row["translate_max_abs_diff"] = t.max_abs_diff
        else:
            model = getattr(env.keras.applications, arch)(weights=None, input_shape=shape,
                                                          classes=CLASSES,
                                                          classifier_activation=None)
        row["params"] = int(model.count_params())
        rng = np.random.default_rng(0)
        prep = getattr(env.keras.applications, PREPROCESS[arch]).preprocess_input
        x = prep(rng.uniform(0, 255, (16, *shape)).astype(np.float32))
        _calibrate_batchnorm(env.keras, model, x)
        qat, cov = annotate.apply(model)
        share = cov.share()
        row.update(layers=share["layers"], layers_q=share["layers_quantized_share"],
                   params_q=share["params_quantized_share"], fallbacks=cov.fallbacks(),
                   annotate_ok=True, notes=cov.notes)
        y = rng.integers(0, CLASSES, 16)
        ranges.init_ranges(qat, x)  # as `qat run` does before fine-tuning
        qat.compile(env.keras.optimizers.Adam(1e-4),
                    env.keras.losses.SparseCategoricalCrossentropy(
                        from_logits=not _softmax(qat)))
        qat.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 4 QAT steps: ranges move off init
        c = convert.convert(Variant.QAT_INT8, qat, representative=x)
        row.update(full_int8=c.verdict.full_int8, reasons=list(c.verdict.reasons),
                   tflite_bytes=c.size)
        xt = prep(rng.uniform(0, 255, (32, *shape)).astype(np.float32))
        runner = ModelRunner(c.content, batch_size=8)
        got = runner.run(xt)[0]
        ref = np.asarray(qat.predict(xt, batch_size=8, verbose=0))
        scale = runner.outputs[0].quant.scale
        row.update(agreement=float(np.mean(got.argmax(-1) == ref.argmax(-1))),
                   distinct_top1=int(len(np.unique(ref.argmax(-1)))),
                   sqnr_db=float(10 * np.log10(np.sum(ref ** 2) /
                                               max(np.sum((got - ref) ** 2), 1e-30))),
                   mean_lsb=float(np.abs(got - ref).mean() / scale),
                   ok=bool(c.verdict.full_int8))
    except Exception as exc:  # a row, not a crash of the benchmark
        if not row.get("skipped"):
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    Path(out).write_text(json.dumps(row))


def _calibrate_batchnorm(keras, model, x) -> None:
    """Give an untrained model the BatchNormalization statistics training would.

    With random (glorot) weights and BN moving statistics of mean 0 / variance 1, activations
    shrink ~3x per block: MobileNet's logits come out ~1e-20, the same for every input, and a
    Keras-vs-.tflite agreement over them means nothing. One forward pass in training mode with
    momentum 0 sets every BN's moving statistics to those of its own input (each BN normalised
    by the batch, as during training), so activations keep unit scale to the logits."""
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    saved = [b.momentum for b in bns]
    for b in bns:
        b.momentum = 0.0
    model(x, training=True)
    for b, m in zip(bns, saved):
        b.momentum = m


def _softmax(model) -> bool:
    last = model.layers[-1]
    last = getattr(last, "layer", last)
    act = getattr(last, "activation", None)
    return getattr(act, "__name__", "") == "softmax"


def render(rows: list[dict]) -> int:
    """Print the Markdown table (architectures in ARCHS order, Keras 2 then 3); 0 if all ok."""
    order = {a: i for i, a in enumerate(ARCHS)}
    rows = sorted(rows, key=lambda r: (r["keras"], order.get(r["arch"], len(order))))
    print("| architecture | Keras | params | annotate | layers quantized | params quantized "
          "| fallbacks used | full-int8 | agreement (classes seen) | mean LSB | SQNR dB | s |")
    print("|---|---|--:|---|--:|--:|---|---|--:|--:|--:|--:|")
    for r in rows:
        if r.get("skipped"):
            print(f"| {r['arch']} | {r['keras']} | — | skipped: {r['skipped']} "
                  f"| | | | | | | | |")
            continue
        fb = ", ".join(f"{k} ×{v}" for k, v in sorted(r.get("fallbacks", {}).items())) or "—"
        if r.get("error"):
            print(f"| {r['arch']} | {r['keras']} | {r.get('params', '—'):,} | "
                  f"{'ok' if r.get('annotate_ok') else 'FAIL'} | | | {fb} | **{r['error']}** "
                  f"| | | | {r.get('seconds', '')} |" if isinstance(r.get('params'), int) else
                  f"| {r['arch']} | {r['keras']} | — | FAIL | | | | **{r['error']}** | | | | "
                  f"{r.get('seconds', '')} |")
            continue
        print(f"| {r['arch']} | {r['keras']} | {r['params']:,} | ok | "
              f"{100 * r['layers_q']:.0f} % | {100 * r['params_q']:.1f} % | {fb} | "
              f"{'yes' if r['full_int8'] else 'NO: ' + '; '.join(r['reasons'])[:80]} | "
              f"{100 * r['agreement']:.1f} % ({r.get('distinct_top1', '?')}) | "
              f"{r['mean_lsb']:.2f} | {r.get('sqnr_db', float('nan')):.1f} | {r['seconds']} |")
    skipped = sum(bool(r.get("skipped")) for r in rows)
    ok = sum(bool(r.get("ok")) for r in rows)
    print(f"\n{ok}/{len(rows) - skipped} rows annotate and convert to full-int8"
          + (f" ({skipped} skipped: the architecture does not exist there)" if skipped else ""))
    return 0 if ok == len(rows) - skipped else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma list of architectures")
    ap.add_argument("--keras", choices=["2", "3", "both"], default="both")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--merge", nargs="+", metavar="ROWS.json",
                    help="print one table from rows saved by earlier --json runs (a later "
                         "file's row replaces an earlier one for the same architecture)")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.merge:
        merged = {}
        for f in args.merge:
            for r in json.loads(Path(f).read_text()):
                merged[(r["arch"], r["keras"])] = r
        return render(list(merged.values()))
    if args._child:
        one(args._child[0], int(args._child[1]), args._child[2])
        return 0
    archs = args.only.split(",") if args.only else list(ARCHS)
    majors = [2, 3] if args.keras == "both" else [int(args.keras)]
    tmp = Path(tempfile.mkdtemp(prefix="coverage-"))
    jobs = [(a, k) for k in majors for a in archs]
    done: list[dict] = []
    lock = threading.Lock()

    def run(job):
        a, k = job
        out = tmp / f"{a}-{k}.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
        p = subprocess.run([sys.executable, __file__, "--_child", a, str(k), str(out)],
                           capture_output=True, text=True, env=env)
        if out.is_file():
            row = json.loads(out.read_text())
        else:
            row = {"arch": a, "keras": k, "ok": False,
                   "error": f"process died (exit {p.returncode}): {p.stderr.strip()[-200:]}"}
        verdict = "ok" if row.get("ok") else "skipped" if row.get("skipped") else "FAILED"
        print(f"  {a} (Keras {k}): {verdict} in "
              f"{row.get('seconds', '?')} s", file=sys.stderr, flush=True)
        with lock:  # rows so far survive an interrupted run
            done.append(row)
            if args.json:
                Path(args.json).write_text(json.dumps(done, indent=1))
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run, jobs))
    return render(rows)


if __name__ == "__main__":
    raise SystemExit(main())
