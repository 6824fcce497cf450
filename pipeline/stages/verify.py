"""Verify stage: run every .tflite with the LiteRT interpreter and compare with Keras.

Metrics: accuracy of the Keras float model, the Keras QAT model and each .tflite over the whole
test split (batched: the input tensor is resized to the batch), or the task's metrics
(stages/metrics.py: token accuracy, cross-entropy and perplexity for sequence models, MSE and
MAE for regression); top-1 agreement (per token for (N, T, V) outputs) and output differences
in LSB of the candidate's output scale, SQNR and cosine similarity. Several inputs are fed by
name; of several outputs the one named by data.output is scored, the others compared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.records import Agreement, QuantParams
from pipeline.stages import metrics as metrics_mod
from pipeline.tflite.isolated import DEFAULT_TIMEOUT_S, run_isolated
from pipeline.tflite.names import output_position
from pipeline.tflite.runtime import ModelRunner


@dataclass
class Scored:
    name: str
    outputs: np.ndarray     # float outputs (dequantized for int8 models) of the scored output
    accuracy: float         # top-1 (classification), token accuracy (sequence), NaN (regression)
    output_quant: QuantParams | None = None
    input_quant: QuantParams | None = None
    runtime: str | None = None
    metrics: dict = field(default_factory=dict)   # the task's metrics (metrics.task_metrics)
    others: dict = field(default_factory=dict)    # the other outputs: name -> (array, quant)


@dataclass(frozen=True)
class Task:
    """How a model is scored: its task, whether it outputs logits, which output is scored
    (its name; "" = the first)."""

    kind: str = "classification"
    from_logits: bool = True
    output: str = ""


CLASSIFICATION = Task()


def default_workers(workers: int = 0) -> int:
    """0 -> one interpreter per CPU core available to this process (at most 8)."""
    if workers:
        return workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=-1) == y)) if len(y) else float("nan")


def _scored(name: str, outs: list, names: list[str], quants: list, y: np.ndarray, task: Task,
            **kw) -> Scored:
    """The Scored of a model's outputs: the scored one (task.output) and the others."""
    k = _pick(names, task.output)
    out = outs[k]
    return Scored(name, out, metrics_mod.primary(task.kind, out, y), quants[k], **kw,
                  metrics=metrics_mod.task_metrics(task.kind, out, y, task.from_logits),
                  others={names[i] or f"output_{i}": (o, quants[i])
                          for i, o in enumerate(outs) if i != k})


def _pick(names: list[str], wanted: str) -> int:
    if not wanted:
        return 0
    k = output_position(names, wanted)
    if k is None:
        raise DataError("The model has no output of that name", wanted,
                        f"Set data.output to one of {', '.join(n for n in names if n)}")
    return k


def score_keras(name: str, model, x, y: np.ndarray, batch_size: int = 256,
                task: Task = CLASSIFICATION) -> Scored:
    """A Keras model on x (an array or {input name: array}: Keras matches inputs by name)."""
    pred = model.predict(x, batch_size=batch_size or 256, verbose=0)
    outs = [np.asarray(p, dtype=np.float32) for p in (pred if isinstance(pred, (list, tuple))
                                                      else [pred])]
    names = list(getattr(model, "output_names", None) or [])[:len(outs)]
    names += [""] * (len(outs) - len(names))
    return _scored(name, outs, names, [None] * len(outs), y, task)


def score_tflite(name: str, model: bytes | str | os.PathLike, x, y: np.ndarray, *,
                 batch_size: int = 0, runtime: str | None = None,
                 num_threads: int | None = None, workers: int = 0,
                 isolate: bool = False, timeout: float | None = None,
                 source: str | None = None, task: Task = CLASSIFICATION) -> Scored:
    """Accuracy (or the task's metrics) of a .tflite on (x, y); x is an array or {input name:
    array} (fed by name, tflite/feeding.py). ``isolate`` runs it in a child process (for files
    this process did not write: a crash of the interpreter becomes a ModelFileError).
    ``source`` names the model in errors (default: its path, or "<bytes>")."""
    if isolate:
        outs, desc = run_isolated(model, x, batch_size=batch_size, runtime=runtime,
                                  num_threads=num_threads or None,
                                  timeout=timeout or DEFAULT_TIMEOUT_S, source=source)
        names = desc.get("output_names") or [""] * len(outs)
        return _scored(name, outs, names, [_quant(d) for d in desc["outputs"]], y, task,
                       input_quant=_quant(desc["inputs"][0]), runtime=desc["runtime"])
    runner = ModelRunner(model, batch_size=batch_size, runtime=runtime,
                         num_threads=num_threads or None, workers=default_workers(workers),
                         source=source)
    outs = runner.run(x)
    return _scored(name, outs, runner.output_names, [o.quant for o in runner.outputs], y, task,
                   input_quant=runner.inputs[0].quant, runtime=runner.runtime)


def _quant(d: dict) -> QuantParams | None:
    return QuantParams(d["scale"], d["zero_point"], d["dtype"]) if d.get("scale") else None


def sqnr_db(ref: np.ndarray, err: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB of ``ref`` against the error ``err``: +inf when
    there is no error, -inf when there is error but no signal (the ratio is 0)."""
    noise = float(np.sum(np.square(err, dtype=np.float64)))
    signal = float(np.sum(np.square(ref, dtype=np.float64)))
    if noise == 0:
        return float("inf")
    return 10 * float(np.log10(signal / noise)) if signal else float("-inf")


def agreement_with_ties(a: np.ndarray, b: np.ndarray, step: float, tolerance_lsb: float
                        ) -> float:
    """Share of samples (tokens) where ``b``'s top class is one ``a`` scores within
    ``tolerance_lsb`` steps of ``a``'s best: exact ties (and, with a tolerance, near-ties a
    rounding step decides) count as agreeing."""
    pick = np.take_along_axis(a, np.argmax(b, -1)[..., None], -1)[..., 0]
    slack = tolerance_lsb * step + 1e-6 * max(step, float(np.abs(a).max(initial=0.0)))
    return float(np.mean(pick >= a.max(-1) - slack))


def compare(ref: Scored, cand: Scored, tolerance_lsb: float = 0.0) -> Agreement:
    """How far ``cand`` is from ``ref`` on the same inputs; LSB in ``cand``'s output scale.
    ``tolerance_lsb``: near-ties for ``top1_agreement_ties`` (needs an int8 output)."""
    a = ref.outputs.astype(np.float64)
    b = cand.outputs.astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"output shapes differ: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    sqnr = sqnr_db(a, a - b)
    na, nb = np.linalg.norm(a.ravel()), np.linalg.norm(b.ravel())
    cosine = float(a.ravel() @ b.ravel() / (na * nb)) if na and nb else float("nan")
    scale = cand.output_quant.scale if cand.output_quant else None
    return Agreement(
        reference=ref.name, candidate=cand.name,
        top1_agreement=float(np.mean(np.argmax(a, -1) == np.argmax(b, -1))),
        mean_abs_error=float(diff.mean()), max_abs_error=float(diff.max()),
        mean_error_lsb=float(diff.mean() / scale) if scale else None,
        max_error_lsb=float(diff.max() / scale) if scale else None,
        sqnr_db=sqnr, cosine=cosine, samples=int(len(a)),
        top1_agreement_ties=agreement_with_ties(a, b, scale or 0.0,
                                                tolerance_lsb if scale else 0.0),
        tolerance_lsb=float(tolerance_lsb if scale else 0.0))


def per_token(ref: Scored, cand: Scored) -> dict:
    """Per-token view of ``cand`` vs ``ref`` for (N, T, V) outputs: top-1 agreement over
    tokens, each token's largest logit error in LSB of ``cand``'s output scale (mean and max
    over tokens) and the share of tokens within 1 LSB."""
    a, b = ref.outputs.astype(np.float64), cand.outputs.astype(np.float64)
    worst = np.abs(a - b).max(axis=-1)  # (N, T): the token's largest output error
    scale = cand.output_quant.scale if cand.output_quant else None
    doc = {"reference": ref.name, "candidate": cand.name, "tokens": int(worst.size),
           "top1_agreement": float(np.mean(np.argmax(a, -1) == np.argmax(b, -1))),
           "mean_token_max_abs_error": float(worst.mean()),
           "mean_token_max_error_lsb": None, "max_token_error_lsb": None,
           "tokens_within_1_lsb": None}
    if scale:
        lsb = worst / scale
        doc.update(mean_token_max_error_lsb=float(lsb.mean()),
                   max_token_error_lsb=float(lsb.max()),
                   tokens_within_1_lsb=float(np.mean(lsb <= 1 + 1e-6)))
    return doc


def compare_others(ref: Scored, cand: Scored) -> list[Agreement]:
    """The outputs that are not scored (a multi-output model), each by its output error in
    LSB of ``cand``'s scale for that output; outputs are paired by name, else by position."""
    rows = []
    ref_items, cand_items = list(ref.others.items()), list(cand.others.items())
    for k, (name, (out, quant)) in enumerate(cand_items):
        match = ref.others.get(name) or (ref_items[k][1] if k < len(ref_items) else None)
        if match is None or np.shape(match[0]) != np.shape(out):
            continue
        rows.append(compare(Scored(f"{ref.name}:{name}", match[0], float("nan")),
                            Scored(f"{cand.name}:{name}", out, float("nan"), quant)))
    return rows
