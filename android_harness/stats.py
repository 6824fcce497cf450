"""Latency statistics: percentiles, pooled moments, bootstrap CI of the median, stability.

Why these and not benchmark_model's mean +- std: latency distributions are right-skewed (a
preempted or throttled invoke is 2-10x slower), so the mean and std are dominated by the tail.
The median is the centre we compare, p90/p99 describe the tail, and the run-to-run spread is
judged on the *per-repeat medians* (separate processes/interpreters, in shuffled order), which is
what varies between sessions on a phone (thermal state, core placement, DVFS).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

# Verdict threshold from the issue: CV of the per-repeat medians <= 5 % is 'stable'.
DEFAULT_STABILITY_CV = 0.05
# Resampling budget: 1000 percentile-bootstrap replicates (Efron & Tibshirani's usual figure
# for percentile intervals); each repeat enters with an equal-size seeded subsample of at most
# 500 invokes so that a 200k-invoke repeat costs no more than a short one. Subsampling widens
# the within-repeat part of the interval a little (conservative); the run-to-run part, which
# dominates on phones and on this host, is untouched.
DEFAULT_BOOTSTRAP = 1000
_BOOTSTRAP_CAP = 500
# Two-sided 95 % Student t quantiles t(0.975, df), df = 1..30 (any statistics table).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964


def small_sample_factor(clusters: int) -> float:
    """Widening for a bootstrap over few clusters (repeats).

    Resampling R clusters underestimates the between-cluster variance by (R-1)/R and uses
    normal rather than t tails; with R = 5 a plain percentile interval covers ~80 % instead of
    95 % (tests/android_harness/test_stats.py simulates it). The factor
    t(0.975, R-1) / z(0.975) * sqrt(R / (R-1)) restores nominal coverage when the run-to-run
    spread dominates and errs on the wide side otherwise.
    """
    if clusters < 2:
        return 1.0
    df = clusters - 1
    if df <= len(_T975):
        t = _T975[df - 1]
    else:  # Cornish-Fisher expansion of the t quantile
        z = _Z975
        t = z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    return t / _Z975 * math.sqrt(clusters / df)


def _around(estimate: float, low: float, high: float, factor: float = 1.0) -> tuple[float, float]:
    """The interval [low, high] made to contain ``estimate`` (the sample median), each side's
    distance from it multiplied by ``factor``.

    A percentile-bootstrap interval need not contain the sample median: with few distinct
    latency values (a timer's resolution) or a skewed pair of repeats the bootstrap medians can
    all fall on one side of it (seen: low 2.3322 us above a p50 of 2.3230 us). Reporting a CI
    that excludes the p50 printed beside it would be wrong either way, so the side that missed
    is brought to the estimate, and widening scales distances, never moving a side across it.
    """
    below, above = max(0.0, estimate - low), max(0.0, high - estimate)
    return estimate - factor * below, estimate + factor * above


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """Linear-interpolation percentile (numpy's default, same as LiteRT's Python tool)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("percentile of an empty sample")
    return float(np.percentile(arr, q))


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Sample std (ddof=1) over mean; None with fewer than two values or a zero mean."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 2 or arr.mean() == 0:
        return None
    return float(arr.std(ddof=1) / arr.mean())


@dataclass(frozen=True)
class Distribution:
    """Summary of per-invoke latencies (microseconds)."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    p5: float
    p50: float
    p90: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> "Distribution":
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            raise ValueError("no latencies to summarise")
        p5, p50, p90, p95, p99 = np.percentile(arr, [5, 50, 90, 95, 99])
        return cls(int(arr.size), float(arr.mean()), float(arr.std(ddof=0)), float(arr.min()),
                   float(arr.max()), float(p5), float(p50), float(p90), float(p95), float(p99))

    def to_dict(self) -> dict:
        return asdict(self)


def pooled_moments(counts: Sequence[int], means: Sequence[float],
                   stds: Sequence[float]) -> tuple[float, float]:
    """Mean and population std of the union of groups known only by (n, mean, std).

    benchmark_model prints population std (tsl::Stat::std_deviation), so groups combine
    exactly: E[x^2] = sum n_i (s_i^2 + m_i^2) / N.
    """
    n = np.asarray(counts, dtype=np.float64)
    m = np.asarray(means, dtype=np.float64)
    s = np.asarray(stds, dtype=np.float64)
    total = n.sum()
    if total <= 0:
        raise ValueError("no samples in the groups")
    mean = float((n * m).sum() / total)
    second = float((n * (s ** 2 + m ** 2)).sum() / total)
    return mean, math.sqrt(max(0.0, second - mean ** 2))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float
    method: str  # how it was computed, e.g. 'hierarchical bootstrap (repeats, then invokes)'
    replicates: int

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_median_ci(groups: Sequence[Sequence[float] | np.ndarray], *, seed: int = 0,
                        replicates: int = DEFAULT_BOOTSTRAP,
                        level: float = 0.95) -> Interval | None:
    """Percentile-bootstrap CI of the median latency.

    ``groups`` are the per-invoke latencies of each repeat. Invokes within one repeat are not
    independent of each other (they share a process, a core and a thermal state), so with two
    or more repeats we resample repeats first and then invokes inside each chosen repeat
    (the hierarchical bootstrap); with one repeat only the invokes can be resampled and the
    interval says so in ``method``. Returns None when there is nothing to resample.
    """
    arrays = [np.asarray(g, dtype=np.float64) for g in groups if len(g) > 0]
    if not arrays or sum(a.size for a in arrays) < 2:
        return None
    rng = np.random.default_rng(seed)
    m = min(_BOOTSTRAP_CAP, min(a.size for a in arrays))
    # Equal-size subsamples (rows of one matrix) keep the resampling vectorised.
    table = np.stack([a if a.size == m else rng.choice(a, m, replace=False) for a in arrays])
    r = len(arrays)
    if r == 1:
        method = "bootstrap over invokes (one repeat: run-to-run spread not covered)"
        picks = table[0][rng.integers(0, m, (replicates, m))]
    else:
        method = "hierarchical bootstrap (repeats, then invokes within each)"
        rows = rng.integers(0, r, (replicates, r, 1))
        picks = table[rows, rng.integers(0, m, (replicates, r, m))].reshape(replicates, -1)
    medians = np.median(picks, axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(medians, [alpha, 1.0 - alpha])
    factor = small_sample_factor(r) if r > 1 and level == 0.95 else 1.0
    low, high = _around(float(np.median(np.concatenate(arrays))), low, high, factor)
    if factor != 1.0:
        method += f", widened x{factor:.2f} for {r} repeats"
    return Interval(float(low), float(high), level, method, replicates)


def bootstrap_center_ci(centers: Sequence[float], *, seed: int = 0,
                        replicates: int = DEFAULT_BOOTSTRAP,
                        level: float = 0.95) -> Interval | None:
    """CI of the median from per-repeat centres only (on-device runs, where benchmark_model
    prints per-run summaries but not per-invoke latencies). Needs three or more repeats."""
    arr = np.asarray(centers, dtype=np.float64)
    if arr.size < 3:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, (replicates, arr.size))
    medians = np.median(arr[idx], axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(medians, [alpha, 1.0 - alpha])
    method = "bootstrap over per-repeat medians (no per-invoke data)"
    factor = small_sample_factor(arr.size) if level == 0.95 else 1.0
    low, high = _around(float(np.median(arr)), low, high, factor)
    if factor != 1.0:
        method += f", widened x{factor:.2f} for {arr.size} repeats"
    return Interval(float(low), float(high), level, method, replicates)


@dataclass(frozen=True)
class Stability:
    verdict: str  # 'stable' | 'unstable' | 'insufficient'
    cv: float | None
    threshold: float
    repeats: int

    @property
    def label(self) -> str:
        if self.verdict == "unstable":
            return f"unstable (CV {100 * self.cv:.1f} %)"
        if self.verdict == "insufficient":
            return f"insufficient ({self.repeats} repeat{'s' if self.repeats != 1 else ''})"
        return "stable"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        return d


def stability(repeat_medians: Sequence[float],
              threshold: float = DEFAULT_STABILITY_CV) -> Stability:
    """'stable' when the CV of the per-repeat medians is <= threshold, 'unstable' with the
    figure otherwise; 'insufficient' below two repeats (no spread can be estimated)."""
    cv = coefficient_of_variation(repeat_medians)
    n = len(repeat_medians)
    if cv is None:
        return Stability("insufficient", None, threshold, n)
    return Stability("stable" if cv <= threshold else "unstable", cv, threshold, n)
