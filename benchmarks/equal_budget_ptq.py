"""Is QAT's gain over PTQ only the extra training? PTQ after the same fine-tune, in float.

QAT fine-tunes the trained float model for ``qat.epochs`` more epochs. When the qat_int8 model
ends up *more* accurate than the float model it came from, part of that gain is the extra
training, which PTQ never got. This benchmark gives PTQ the same budget: it fine-tunes the run's
float model (keras/float_model.h5) in float with the run's own QAT settings (epochs, batch
size, learning rate and schedule, the same train/validation split and seed), converts it with
the converter's full-int8 PTQ (same calibration samples as the run), and scores both on the
run's test split, paired against the run's qat_int8.tflite. A 4-bit run (qat_w4a8.tflite) is
paired with the better of the 4-bit PTQs of the fine-tuned model (aeq_w4a8, aeq_w4a8_mse).

    .venv/bin/python benchmarks/equal_budget_ptq.py artifacts/glyphs_mnv3

Prints the float model before/after the fine-tune, its PTQ, QAT, and QAT minus this PTQ with
the paired 95 % interval and McNemar's p (pipeline/stages/stats.py). Exit 0.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core import keras_env  # noqa: E402
from pipeline.core.records import Variant  # noqa: E402
from pipeline.keras import graph  # noqa: E402
from pipeline.stages import (config, convert, data, finetune, load, metrics,  # noqa: E402
                             modelio, peers, stats)
from pipeline.tflite.runtime import ModelRunner  # noqa: E402


def _right(outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correct top-1 per sample (per real token, flattened, for a sequence model)."""
    return (np.argmax(outputs, axis=-1) == y)[np.asarray(y) != metrics.PAD]


def _perplexity(logits: np.ndarray, y: np.ndarray, from_logits: bool) -> float | None:
    """exp(mean cross-entropy per token), as the run's report computes it (stages/metrics.py);
    None for a classifier."""
    if np.ndim(logits) != 3:
        return None
    return float(np.exp(metrics.mean_nll(logits, y, from_logits)))


def _scores(outputs: np.ndarray, y: np.ndarray, from_logits: bool
            ) -> tuple[np.ndarray, float | None]:
    return _right(outputs, y), _perplexity(outputs, y, from_logits)


def _tflite_scores(content: bytes, x, y: np.ndarray, from_logits: bool):
    return _scores(ModelRunner(content).run(x)[0], y, from_logits)


def finetune_float(model, splits, qat_cfg, from_logits: bool) -> float:
    """The run's QAT schedule applied to the float model; returns seconds."""
    keras = keras_env.load().keras
    steps = qat_cfg.epochs * math.ceil(len(splits.x_train) / qat_cfg.batch_size)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    model.compile(keras.optimizers.Adam(finetune._schedule(keras, qat_cfg.learning_rate,
                                                           qat_cfg.lr_schedule, steps)),
                  loss, ["accuracy"])
    t0 = time.perf_counter()
    model.fit(splits.x_train, splits.y_train, validation_data=(splits.x_val, splits.y_val),
              epochs=qat_cfg.epochs, batch_size=qat_cfg.batch_size, shuffle=True, verbose=2)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a finished run directory, e.g. artifacts/glyphs_mnv3")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    cfg = config.load(run / "config.toml")
    inputs = load.load_inputs(cfg, lambda *a: None,
                              model=modelio.load_model(path=str(run / "keras" /
                                                                "float_model.h5")).model)
    model, ds, logits = inputs.loaded.model, inputs.dataset, inputs.from_logits
    y = ds.y_test
    before, ppl_before = _scores(model.predict(ds.x_test, verbose=0), y, logits)
    seconds = finetune_float(model, inputs.splits, cfg.qat, inputs.from_logits)
    after, ppl_after = _scores(model.predict(ds.x_test, verbose=0), y, logits)
    rep = data.representative_sample(ds.x_train, cfg.convert.representative_samples, cfg.seed)
    # the graph the run's PTQ was made from (attention rewritten: stages/run.py _float_graph)
    source = graph.rebuild(model).model
    qat_v = Variant.qat_of(Variant(p.stem) for p in run.glob("*.tflite")
                           if p.stem in Variant.names())
    ptqs = {}
    if qat_v is Variant.QAT_W4A8:  # the 4-bit PTQs of the fine-tuned float model (the peers)
        f32 = convert.to_tflite(source, Variant.FLOAT32)
        for v in Variant.ptq_like(list(Variant), qat_v):
            ptqs[v] = _tflite_scores(peers.quantize(f32, rep, v), ds.x_test, y, logits)
    else:
        ptqs[Variant.PTQ_INT8] = _tflite_scores(convert.to_tflite(
            source, Variant.PTQ_INT8, rep, cfg.convert.io), ds.x_test, y, logits)
    best = max(ptqs, key=lambda v: ptqs[v][0].mean())  # on the test split: flatters PTQ
    ptq, ppl_ptq = ptqs[best]
    qat, ppl_qat = _tflite_scores((run / qat_v.filename).read_bytes(), ds.x_test, y, logits)
    pair = stats.paired(qat_v.value, qat, f"{best}_after_finetune", ptq)
    print(f"run: {run}  ({len(y)} test samples; fine-tune: {cfg.qat.epochs} epoch(s), "
          f"lr {cfg.qat.learning_rate}, {cfg.qat.lr_schedule}, batch {cfg.qat.batch_size}, "
          f"{seconds:.0f} s)")
    for label, right, ppl in (("float before fine-tune", before, ppl_before),
                              ("float after fine-tune", after, ppl_after),
                              *((f"{v} after fine-tune", *ptqs[v]) for v in ptqs),
                              (f"{qat_v} (the run's)", qat, ppl_qat)):
        extra = "" if ppl is None else f"  perplexity {ppl:.3f}"
        print(f"{label:24s} {100 * right.mean():6.2f} %{extra}")
    # per token for a sequence model: tokens of one window are not independent, so the
    # interval is narrower than the data supports there (the run's report has the bootstrap)
    print(f"QAT - equal-budget PTQ ({best}) = {100 * pair.difference:+.2f} pp, paired 95 % CI "
          f"{100 * pair.ci95[0]:+.2f} to {100 * pair.ci95[1]:+.2f} pp, McNemar p = "
          f"{pair.mcnemar_p:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
