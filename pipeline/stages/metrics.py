"""Task kinds and the metrics that fit each (numpy only).

- ``classification``: logits or probabilities (N, C), integer labels (N,): top-1 accuracy.
- ``sequence``: per-token logits or probabilities (N, T, V), integer targets (N, T): token
  accuracy, cross-entropy in nats per token and perplexity = exp(cross-entropy). A target of
  ``PAD`` (-1) marks a position with no next token (padding): it counts in no metric (and
  QAT's loss ignores it, finetune.py).
- ``regression``: float outputs (N, ...) and float targets of the same size per sample: mean
  squared error and mean absolute error.

Intervals of the sequence and regression metrics come from a seeded bootstrap over *samples*
(whole sequences, not tokens: the tokens of one sequence are correlated, so resampling tokens
would give intervals that are too narrow). ``BOOTSTRAP_RESAMPLES`` resamples of the sequences
with replacement, each giving the ratio of summed token losses to summed token counts; the
95 % interval is the 2.5th-97.5th percentile of those (percentile bootstrap). Perplexity's
interval is exp() of the cross-entropy's (exp is monotone). Paired comparisons (model A vs B on
the same sequences) resample the same sequence indices for both, so their correlation counts.
"""

from __future__ import annotations

import math

import numpy as np

TASKS = ("auto", "classification", "sequence", "regression")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP = (f"percentile bootstrap over test samples (whole sequences for sequence models), "
             f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}, 95 %")
# Probabilities (a model ending in softmax) are floored here before the log: an int8 softmax
# output rounds probabilities below half its step (1/512) to 0, whose log is -inf.
PROB_FLOOR = 1e-7
PAD = -1  # a padded sequence position's target


def real(y: np.ndarray) -> np.ndarray:
    """1.0 where ``y`` is a real target, 0.0 at padding (PAD)."""
    return (np.asarray(y) != PAD).astype(np.float64)


def top1(outputs: np.ndarray) -> np.ndarray:
    return np.argmax(outputs, axis=-1)


def token_nll(outputs: np.ndarray, y: np.ndarray, from_logits: bool) -> np.ndarray:
    """Negative log-likelihood (nats) of each target under the outputs' last axis: (N, T);
    0 at padded positions (PAD)."""
    z = np.asarray(outputs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if (y == PAD).any():
        return _token_nll(z, np.where(y == PAD, 0, y), from_logits) * real(y)
    return _token_nll(z, y, from_logits)


def mean_nll(outputs: np.ndarray, y: np.ndarray, from_logits: bool) -> float:
    """Cross-entropy in nats per real (not padded) token."""
    return float(token_nll(outputs, y, from_logits).sum() / max(real(y).sum(), 1.0))


def _token_nll(z: np.ndarray, y: np.ndarray, from_logits: bool) -> np.ndarray:
    idx = y[..., None]
    if from_logits:
        m = z.max(axis=-1, keepdims=True)
        lse = m[..., 0] + np.log(np.exp(z - m).sum(axis=-1))
        return lse - np.take_along_axis(z, idx, axis=-1)[..., 0]
    p = np.clip(z, PROB_FLOOR, None)
    p = p / p.sum(axis=-1, keepdims=True)
    return -np.log(np.take_along_axis(p, idx, axis=-1)[..., 0])


def _per_sample(values: np.ndarray) -> np.ndarray:
    """Per-sample sums of a (N, ...) array."""
    return values.reshape(len(values), -1).sum(axis=1)


def _bootstrap_idx(n: int, seed: int = BOOTSTRAP_SEED,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


def ratio_ci(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    """Percentile interval of sum(num)/sum(den) over the resamples ``idx``."""
    if len(num) == 0:
        return float("nan"), float("nan")
    stats = num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1e-300)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def sequence_metrics(outputs: np.ndarray, y: np.ndarray, from_logits: bool) -> dict:
    """Token accuracy, cross-entropy (nats/token), perplexity, each with its 95 % interval."""
    nll = token_nll(outputs, y, from_logits)
    right = (top1(outputs) == y).astype(np.float64)  # a padded position never matches
    tokens = _per_sample(real(y))
    nll_s, right_s = _per_sample(nll), _per_sample(right)
    idx = _bootstrap_idx(len(y))
    ce = float(nll_s.sum() / tokens.sum()) if len(y) else float("nan")
    ce_lo, ce_hi = ratio_ci(nll_s, tokens, idx)
    acc = float(right_s.sum() / tokens.sum()) if len(y) else float("nan")
    return {"token_accuracy": acc, "token_accuracy_ci95": list(ratio_ci(right_s, tokens, idx)),
            "cross_entropy": ce, "cross_entropy_ci95": [ce_lo, ce_hi],
            "perplexity": _exp(ce), "perplexity_ci95": [_exp(ce_lo), _exp(ce_hi)],
            "sequences": int(len(y)), "tokens": int(tokens.sum())}


def regression_metrics(outputs: np.ndarray, y: np.ndarray) -> dict:
    """MSE and MAE over every target value, with 95 % intervals (bootstrap over samples)."""
    out = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    err = out - np.asarray(y, np.float64).reshape(len(y), -1)
    per = np.full(len(err), float(err.shape[1]))
    sq, ab = _per_sample(err ** 2), _per_sample(np.abs(err))
    idx = _bootstrap_idx(len(err))
    n = max(per.sum(), 1.0)
    return {"mse": float(sq.sum() / n), "mse_ci95": list(ratio_ci(sq, per, idx)),
            "mae": float(ab.sum() / n), "mae_ci95": list(ratio_ci(ab, per, idx)),
            "samples": int(len(err))}


def _exp(v: float) -> float:
    return math.exp(v) if math.isfinite(v) and v < 700 else float("inf")


def primary(task: str, outputs: np.ndarray, y: np.ndarray) -> float:
    """The number each scored model carries as ``accuracy``: top-1 accuracy (classification),
    token accuracy (sequence), NaN for regression (it has no accuracy)."""
    if task == "regression" or not len(y):
        return float("nan")
    if task == "sequence":
        return float(np.sum(top1(outputs) == y) / max(real(y).sum(), 1.0))
    return float(np.mean(top1(outputs) == y))


def task_metrics(task: str, outputs: np.ndarray, y: np.ndarray, from_logits: bool) -> dict:
    """The task's metrics of one model ({} for classification: accuracy says it all)."""
    if task == "sequence":
        return sequence_metrics(outputs, y, from_logits)
    if task == "regression":
        return regression_metrics(outputs, y)
    return {}


def paired_increase(task: str, a_out: np.ndarray, b_out: np.ndarray, y: np.ndarray,
                    from_logits: bool) -> dict:
    """How much worse A is than B on the same samples, in % of B's metric, with a paired
    bootstrap interval: perplexity for sequence models (ppl_A / ppl_B - 1 =
    exp(CE_A - CE_B) - 1), mean squared error for regression."""
    if task == "sequence":
        a = _per_sample(token_nll(a_out, y, from_logits))
        b = _per_sample(token_nll(b_out, y, from_logits))
        den = _per_sample(real(y))  # real (not padded) tokens per sequence

        def pct(sa, sb, sd):
            return 100 * (np.exp((sa - sb) / np.maximum(sd, 1e-300)) - 1)
        metric = "perplexity"
    else:
        a = _per_sample((np.asarray(a_out, np.float64).reshape(len(y), -1)
                         - np.asarray(y, np.float64).reshape(len(y), -1)) ** 2)
        b = _per_sample((np.asarray(b_out, np.float64).reshape(len(y), -1)
                         - np.asarray(y, np.float64).reshape(len(y), -1)) ** 2)
        den = np.ones(len(y))

        def pct(sa, sb, sd):
            return 100 * (sa / np.maximum(sb, 1e-300) - 1)
        metric = "mse"
    idx = _bootstrap_idx(len(y))
    value = float(pct(a.sum(), b.sum(), den.sum()))
    boot = pct(a[idx].sum(axis=1), b[idx].sum(axis=1), den[idx].sum(axis=1))
    lo, hi = np.percentile(boot, [2.5, 97.5]) if len(y) else (float("nan"),) * 2
    return {"metric": metric, "increase_pct": value, "ci95": [float(lo), float(hi)],
            "samples": int(len(y)), "interval": BOOTSTRAP}
