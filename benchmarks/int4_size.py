"""INT4 file size and host latency on a model of more than 1 M parameters: MobileNetV2
(tf_keras.applications, alpha 1.0, 1000 classes, 3.5 M parameters, 96x96x3 input).

The zoo's models are all under 1 M parameters, where the graph and the per-channel scales are
a large share of the file; this measures the issue's size target where it applies. The
weights are untrained (seeded Glorot init: nothing is downloaded), so accuracy means nothing
here and is not reported: sizes depend only on the weights' count and layout, and latency on
the ops. Made the way `qat run` makes them:

- ``ptq_int8``: the converter's PTQ, calibrated on 32 seeded random images;
- ``qat_int8`` / ``qat_w4a8``: annotate (8-bit / 4-bit weights, depthwise 8-bit), activation
  ranges from the same images (range_init), converted; no fine-tuning (size and speed do not
  depend on it);
- ``aeq_w4a8``: ai-edge-quantizer's static INT4-weight PTQ of float32.tflite (the zoo extra).

Prints each file's size, its INT4 / INT8 weight bytes and ratio to ptq_int8, and with
``--latency`` the host p50 of each (android-harness host, the zoo's protocol; a file the
interpreter refuses is reported by the harness and has no p50: measured, aeq_w4a8 of these
untrained weights fails LiteRT's CONV_2D prepare, "no_integer_overflow_from_quantization").

    .venv/bin/python benchmarks/int4_size.py [--output artifacts/int4_size] [--latency]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import zoo  # noqa: E402  (after the path set-up)
from pipeline.core import keras_env, machine  # noqa: E402
from pipeline.core.artifacts import atomic_write_bytes  # noqa: E402
from pipeline.core.records import Variant  # noqa: E402
from pipeline.keras import ranges  # noqa: E402
from pipeline.stages import annotate, convert, peers  # noqa: E402

SHAPE = (96, 96, 3)


def build(env):
    keras_env.set_seed(0)
    return env.keras.applications.MobileNetV2(input_shape=SHAPE, alpha=1.0, weights=None,
                                              classes=1000)


def variants(model, x) -> dict:
    """variant -> Converted, for float32, ptq_int8, qat_int8, qat_w4a8 (+ aeq_w4a8)."""
    out = {v: convert.convert(v, model, representative=x)
           for v in (Variant.FLOAT32, Variant.PTQ_INT8)}
    for v in (Variant.QAT_INT8, Variant.QAT_W4A8):
        qat, _ = annotate.apply(model, weight_bits=v.weight_bits)
        ranges.init_ranges(qat, x)
        out[v] = convert.convert(v, qat, representative=x)
    if peers.available():
        out[Variant.AEQ_W4A8] = convert.convert(
            Variant.AEQ_W4A8, None, representative=x,
            float_tflite=out[Variant.FLOAT32].content)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="artifacts/int4_size")
    ap.add_argument("--latency", action="store_true", help="android-harness host on each")
    args = ap.parse_args(argv)
    env = keras_env.load()
    model = build(env)
    x = np.random.default_rng(0).uniform(-1, 1, (32, *SHAPE)).astype(np.float32)
    conv = variants(model, x)
    out = Path(args.output)
    lat = {}
    for v, c in conv.items():  # one harness run per file: a file LiteRT refuses is noted
        (out / v.value).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / v.value / v.filename, c.content)
        if args.latency:
            lat.update(zoo._latency(zoo.measure_host(out / v.value, out / v.value / "harness")))
    base = conv[Variant.PTQ_INT8].size
    rows = []
    for v, c in conv.items():
        s = c.model.size_breakdown()
        rows.append({"variant": v.value, "bytes": c.size, "ratio_to_ptq_int8": c.size / base,
                     "int4_weights": s.get("int4_weights", 0),
                     "int8_weights": s.get("int8_weights", 0),
                     "full_int8": None if c.verdict is None else c.verdict.full_int8,
                     "host_p50_us": lat.get(v.value, {}).get("p50_us")})
    doc = {"model": "MobileNetV2 alpha 1.0, 1000 classes, 96x96x3 (untrained)",
           "params": int(model.count_params()), "cpu": machine.summary(), "rows": rows}
    atomic_write_bytes(out / "int4_size.json", (json.dumps(doc, indent=1) + "\n").encode())
    print(f"{doc['model']}: {doc['params']:,} parameters; {doc['cpu']}")
    for r in rows:
        p50 = "" if r["host_p50_us"] is None else f"  host p50 {r['host_p50_us']:.0f} µs"
        print(f"{r['variant']:>10}: {r['bytes']:>10,} B  {r['ratio_to_ptq_int8']:.2f}x ptq_int8"
              f"  int4 {r['int4_weights']:,} B  int8 {r['int8_weights']:,} B  full-int8 "
              f"{r['full_int8']}{p50}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
