"""Keras 3 -> tf_keras translation over keras.applications (Keras 3), saved as .keras.

Each architecture is built by Keras 3 with weights=None at a small input (the minimum each
accepts: 75 for Xception/Inception, 64 otherwise), saved as .keras in a temp dir, then read and
translated by pipeline.keras.keras3 (load + translate + weight copy + output check, timed together).
Prints a Markdown table: architecture, input, params (Keras 3 = tf_keras, checked), layers
(Keras 3 layers/ops -> tf_keras layers), translate ok, max abs diff of the model outputs on 2
seeded random inputs, max per-layer relative diff (max|diff| / max|output| over every layer:
random-init networks shrink the signal before the softmax, so the outputs alone prove little),
seconds (read + translate + copy + check).

    .venv/bin/python benchmarks/keras3_translate_bench.py [--only NAME ...] [--size N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.keras import keras3  # noqa: E402

from pipeline.core import keras_env
from pipeline.core.errors import QatError  # noqa: E402

# (name, minimum input side) — minimums from each builder's obtain_input_shape call.
ARCHS = [("MobileNet", 64), ("MobileNetV2", 64), ("MobileNetV3Small", 64),
         ("MobileNetV3Large", 64), ("EfficientNetB0", 64), ("EfficientNetV2B0", 64),
         ("ResNet50", 64), ("ResNet50V2", 64), ("DenseNet121", 64), ("NASNetMobile", 64),
         ("Xception", 75), ("InceptionV3", 75), ("ConvNeXtTiny", 64), ("RegNetX002", 64),
         ("InceptionResNetV2", 75)]


def _count_layers(model) -> int:
    """Layers of a tf_keras model, nested models' layers included, InputLayers excluded."""
    n = 0
    for layer in model.layers:
        if hasattr(layer, "layers"):
            n += _count_layers(layer)
        elif type(layer).__name__ != "InputLayer":
            n += 1
    return n


def run_one(k3, name: str, side: int, tmp: Path) -> list[str]:
    builder = getattr(k3.applications, name, None)
    if builder is None:
        return [name, "-", "-", "-", f"n/a (not in keras.applications {k3.__version__})",
                "-", "-", "-"]
    model3 = builder(weights=None, input_shape=(side, side, 3))
    path = tmp / f"{name}.keras"
    model3.save(path)
    params = model3.count_params()
    t0 = time.perf_counter()
    try:
        t = keras3.translate_keras3_file(path, seed=0)
    except (QatError, ValueError, TypeError) as exc:
        return [name, f"{side}", f"{params:,}", "-", f"no: {exc}", "-", "-",
                f"{time.perf_counter() - t0:.1f}"]
    secs = time.perf_counter() - t0
    if t.model.count_params() != params:
        ok = f"no: params differ ({t.model.count_params():,})"
    else:
        ok = "yes"
    return [name, f"{side}", f"{params:,}", f"{t.layers} → {_count_layers(t.model)}", ok,
            f"{t.max_abs_diff:.1e}", f"{t.max_layer_rel_diff:.1e}", f"{secs:.1f}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    ap.add_argument("--size", type=int, default=0, help="input side (default: per model)")
    args = ap.parse_args(argv)
    k3 = keras_env.load_keras3()
    print(f"keras {k3.__version__}, tf_keras {keras_env.load().versions['tf_keras']}",
          file=sys.stderr)
    rows = [["architecture", "input", "params", "layers (K3 → tf_keras)", "translate ok",
             "max abs diff", "max layer rel diff", "seconds"]]
    with tempfile.TemporaryDirectory() as tmp:
        for name, side in ARCHS:
            if args.only and name not in args.only:
                continue
            rows.append(run_one(k3, name, args.size or side, Path(tmp)))
            print("  " + " | ".join(rows[-1]), file=sys.stderr, flush=True)
            k3.backend.clear_session()
            keras_env.load().keras.backend.clear_session()
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows[1:]:
        print("| " + " | ".join(r) + " |")
    return 0 if all(r[4] == "yes" or r[4].startswith("n/a") for r in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
