"""Verify stage: run every .tflite with the LiteRT interpreter and compare with Keras.

Metrics: accuracy of the Keras float model, the Keras QAT model and each .tflite over the whole
test split (batched: the input tensor is resized to the batch); top-1 agreement and output
differences in LSB of the candidate's output scale, SQNR and cosine similarity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from pipeline.core.records import Agreement, QuantParams
from pipeline.tflite.isolated import DEFAULT_TIMEOUT_S, run_isolated
from pipeline.tflite.runtime import ModelRunner


@dataclass
class Scored:
    name: str
    outputs: np.ndarray     # float outputs (dequantized for int8 models)
    accuracy: float
    output_quant: QuantParams | None = None
    input_quant: QuantParams | None = None
    runtime: str | None = None


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


def score_keras(name: str, model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> Scored:
    out = np.asarray(model.predict(x, batch_size=batch_size or 256, verbose=0),
                     dtype=np.float32)
    return Scored(name, out, accuracy(out, y))


def score_tflite(name: str, model: bytes | str | os.PathLike, x: np.ndarray, y: np.ndarray, *,
                 batch_size: int = 0, runtime: str | None = None,
                 num_threads: int | None = None, workers: int = 0,
                 isolate: bool = False, timeout: float | None = None,
                 source: str | None = None) -> Scored:
    """Accuracy of a .tflite on (x, y). ``isolate`` runs it in a child process (for files
    this process did not write: a crash of the interpreter becomes a ModelFileError).
    ``source`` names the model in errors (default: its path, or "<bytes>")."""
    if isolate:
        outs, desc = run_isolated(model, x, batch_size=batch_size, runtime=runtime,
                                  num_threads=num_threads or None,
                                  timeout=timeout or DEFAULT_TIMEOUT_S, source=source)
        q = [_quant(d) for d in (desc["outputs"][0], desc["inputs"][0])]
        return Scored(name, outs[0], accuracy(outs[0], y), q[0], q[1], desc["runtime"])
    runner = ModelRunner(model, batch_size=batch_size, runtime=runtime,
                         num_threads=num_threads or None, workers=default_workers(workers),
                         source=source)
    out = runner.run(x)[0]
    return Scored(name, out, accuracy(out, y), runner.outputs[0].quant, runner.inputs[0].quant,
                  runner.runtime)


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


def compare(ref: Scored, cand: Scored) -> Agreement:
    """How far ``cand`` is from ``ref`` on the same inputs; LSB in ``cand``'s output scale."""
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
        sqnr_db=sqnr, cosine=cosine, samples=int(len(a)))
