"""Transformer classifiers end to end through `qat run`: one written in tf_keras, one in Keras 3.

The issue's target: a tf_keras and a Keras-3 transformer classifier, once trained, go through
`qat run` to a full-int8 .tflite whose top-1 agrees with the Keras QAT model on >= 99 % of the
test split. Both models are the same small pre-LayerNorm transformer over scikit-learn's
digits, each image's 8 rows as 8 tokens of 8 pixels: an EinsumDense token projection with a
per-position bias, 2 blocks (d = 32, 2 heads; gelu and swish feed-forwards), a final
LayerNormalization, average pooling and a Dense head. Each is trained in its own framework
(20 epochs, Adam 3e-3, seeded), saved (.keras), and handed to `qat run --model FILE --data
NPZ` with the default recipe; the Keras 3 file goes through the translator.

    .venv/bin/python benchmarks/transformer_e2e.py [--output artifacts/transformer_e2e]

Prints, per framework, float / PTQ / QAT int8 accuracy with the Wilson 95 % interval, the
agreement of qat_int8.tflite with Keras QAT (and its interval: the test split is 450 images,
so one flip is 0.22 pp), full-int8, sizes and the run's time; then the target, PASS or FAIL.
Exit 0 when both pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core import keras_env  # noqa: E402

TARGET = 0.99


def build(keras, d: int = 32, heads: int = 2, blocks: int = 2):
    """The classifier in either Keras (the same layer API in tf_keras and Keras 3)."""
    L = keras.layers
    x = keras.Input((8, 8), name="rows")
    h = L.EinsumDense("btf,fd->btd", output_shape=(8, d), bias_axes="td", name="embed")(x)
    for i in range(blocks):
        a = L.LayerNormalization(name=f"b{i}_ln1")(h)
        a = L.MultiHeadAttention(heads, d // heads, name=f"b{i}_mha")(a, a)
        h = L.Add(name=f"b{i}_add1")([h, a])
        f = L.LayerNormalization(name=f"b{i}_ln2")(h)
        f = L.Dense(2 * d, activation=("gelu", "swish")[i % 2], name=f"b{i}_ff1")(f)
        h = L.Add(name=f"b{i}_add2")([h, L.Dense(d, name=f"b{i}_ff2")(f)])
    h = L.GlobalAveragePooling1D(name="pool")(L.LayerNormalization(name="ln_f")(h))
    return keras.Model(x, L.Dense(10, name="head")(h), name="digits_transformer")


def digits_rows(path: Path) -> dict:
    from models.digits_cnn import load_dataset

    d = load_dataset()
    rows = lambda a: np.asarray(a, np.float32).reshape(len(a), 8, 8)  # noqa: E731
    data = {"x_train": rows(d["x_train"]), "y_train": d["y_train"],
            "x_test": rows(d["x_test"]), "y_test": d["y_test"]}
    np.savez(path, **data)
    return data


def train_and_save(flavour: str, data: dict, path: Path) -> float:
    """Train the classifier in ``flavour``'s own Keras and save it; returns seconds."""
    keras_env.set_seed(0)
    keras = keras_env.load().keras if flavour == "tf_keras" else keras_env.load_keras3()
    if flavour == "keras3":
        keras.utils.set_random_seed(0)
    model = build(keras)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    model.fit(data["x_train"], data["y_train"], epochs=20, batch_size=32, verbose=0)
    model.save(path)
    return time.perf_counter() - t0


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def qat_run(model: Path, npz: Path, out: Path, name: str) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--model", str(model),
                           "--data", str(npz), "--output", str(out), "--name", name,
                           "--quiet"], cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    return proc.returncode, time.perf_counter() - t0, tail


def summarize(run_dir: Path) -> dict:
    r = json.loads((run_dir / "report.json").read_text())
    n = r["agreement"][0]["samples"]
    qat = next(a for a in r["agreement"] if a["candidate"] == "qat_int8")
    variants = {v["variant"]: v for v in r["variants"]}
    return {"n": n, "agreement": qat["top1_agreement"], "mean_lsb": qat["mean_error_lsb"],
            "ties": qat.get("top1_agreement_ties"),
            "accuracy": {k: v["accuracy"] for k, v in variants.items()},
            "size": {k: v["size_bytes"] for k, v in variants.items()},
            "full_int8": variants["qat_int8"]["full_int8"],
            "keras3": r["model"].get("keras3_translation") is not None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default="artifacts/transformer_e2e", type=Path)
    args = ap.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    data = digits_rows(args.output / "digits_rows.npz")
    ok = True
    print(f"transformer classifiers through `qat run` (CPU: {_cpu()})")
    for flavour in ("tf_keras", "keras3"):
        path = args.output / f"{flavour}_transformer.keras"
        train_s = train_and_save(flavour, data, path)
        code, run_s, tail = qat_run(path, args.output / "digits_rows.npz", args.output, flavour)
        s = summarize(args.output / flavour)
        k = round(s["agreement"] * s["n"])
        lo, hi = wilson(k, s["n"])
        acc = "  ".join(f"{v} {100 * a:.2f} %" for v, a in s["accuracy"].items())
        passed = s["agreement"] >= TARGET and s["full_int8"]  # strict argmax, ties not counted
        ok &= passed
        origin = "translated from Keras 3" if s["keras3"] else "written in tf_keras"
        print(f"\n{flavour} ({origin}): "
              f"float training {train_s:.0f} s, `qat run` {run_s:.0f} s (exit {code}: {tail})")
        print(f"  accuracy: {acc}")
        print(f"  sizes: " + "  ".join(f"{v} {b:,} B" for v, b in s["size"].items()))
        print(f"  qat_int8 vs Keras QAT: agreement {100 * s['agreement']:.2f} % "
              f"({s['n'] - k} of {s['n']} differ) [95 % {100 * lo:.2f}, {100 * hi:.2f}]; "
              f"{100 * s['ties']:.2f} % counting exact ties; "
              f"mean |error| {s['mean_lsb']:.2f} LSB, full-int8 {s['full_int8']}")
        print(f"  target: agreement >= {100 * TARGET:.0f} % and full-int8: "
              f"{'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
