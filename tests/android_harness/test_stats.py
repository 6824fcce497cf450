"""Latency statistics: pooled moments, bootstrap CI coverage, stability verdict."""

from __future__ import annotations

import numpy as np
import pytest

from android_harness import stats

SEED = 0


def test_distribution_matches_numpy():
    x = np.random.default_rng(SEED).lognormal(3, 0.2, 5001)
    d = stats.Distribution.of(x)
    assert d.p50 == pytest.approx(np.median(x))
    assert d.p90 == pytest.approx(np.percentile(x, 90))
    assert d.p99 == pytest.approx(np.percentile(x, 99))
    assert d.mean == pytest.approx(x.mean()) and d.std == pytest.approx(x.std())
    assert d.count == 5001 and d.min == x.min() and d.max == x.max()


def test_pooled_moments_equal_the_union():
    rng = np.random.default_rng(SEED)
    groups = [rng.normal(100 + 10 * k, 3 + k, n) for k, n in enumerate((50, 200, 7))]
    mean, std = stats.pooled_moments([g.size for g in groups], [g.mean() for g in groups],
                                     [g.std() for g in groups])
    union = np.concatenate(groups)
    assert mean == pytest.approx(union.mean()) and std == pytest.approx(union.std())


@pytest.mark.parametrize("medians, verdict", [
    ([100, 101, 99, 100, 100], "stable"),
    ([100, 120, 80, 100, 100], "unstable"),
    ([100], "insufficient"),
])
def test_stability_verdict(medians, verdict):
    s = stats.stability(medians, 0.05)
    assert s.verdict == verdict
    if verdict != "insufficient":
        assert s.cv == pytest.approx(np.std(medians, ddof=1) / np.mean(medians))
    if verdict == "unstable":
        assert s.label == f"unstable (CV {100 * s.cv:.1f} %)"


@pytest.mark.parametrize("repeats", [3, 5])
def test_hierarchical_bootstrap_covers_the_true_median(repeats):
    """Simulate runs whose repeats differ (a per-repeat offset, as between processes on a
    phone) and check the 95 % interval contains the population median about 95 % of the time.
    Pooling the invokes as if independent covers far less (that is the failure mode of a
    naive bootstrap, and of benchmark_model's mean +- std)."""
    rng = np.random.default_rng(SEED + repeats)
    true_median = 1000.0
    covered = naive_covered = 0
    trials = 100
    for t in range(trials):
        offsets = rng.normal(0, 20, repeats)
        groups = [true_median + o + rng.normal(0, 30, 150) for o in offsets]
        ci = stats.bootstrap_median_ci(groups, seed=t, replicates=300)
        covered += ci.low <= true_median <= ci.high
        naive = stats.bootstrap_median_ci([np.concatenate(groups)], seed=t, replicates=300)
        naive_covered += naive.low <= true_median <= naive.high
    # 100 trials at a true 95 %: 88 or more with probability > 0.99
    assert covered / trials >= 0.88
    assert naive_covered / trials < 0.7


def test_small_sample_factor():
    # t(0.975, 4) / z(0.975) * sqrt(5/4), from the t table
    assert stats.small_sample_factor(5) == pytest.approx(2.776 / 1.959964 * (5 / 4) ** 0.5)
    assert stats.small_sample_factor(1) == 1.0
    # large R: tends to 1 (the t tail approaches the normal one)
    assert 1.0 < stats.small_sample_factor(200) < 1.01
    assert stats.small_sample_factor(31) < stats.small_sample_factor(30)


def test_bootstrap_is_seeded_and_labelled():
    rng = np.random.default_rng(SEED)
    groups = [rng.lognormal(2, 0.1, 3000) for _ in range(3)]
    a = stats.bootstrap_median_ci(groups, seed=1)
    assert a == stats.bootstrap_median_ci(groups, seed=1)
    assert a.low < np.median(np.concatenate(groups)) < a.high
    assert a.method.startswith("hierarchical")
    one = stats.bootstrap_median_ci(groups[:1], seed=1)
    assert "one repeat" in one.method
    assert stats.bootstrap_median_ci([[]]) is None


def test_center_ci_needs_three_repeats():
    assert stats.bootstrap_center_ci([1.0, 2.0]) is None
    centers = [10.0, 11.0, 12.0, 10.5, 11.5]
    ci = stats.bootstrap_center_ci(centers, seed=SEED)
    assert ci.low < np.median(centers) < ci.high
    assert ci == stats.bootstrap_center_ci(centers, seed=SEED)
    assert "5 repeats" in ci.method


def test_median_ci_always_contains_the_reported_median():
    # Seven short repeats at 1 us and one long repeat at 5 us: the pooled median (what the
    # report prints as p50) is 5 us, but the hierarchical bootstrap draws repeats with equal
    # weight, so almost every resampled median is 1 us and the raw percentile interval is
    # [1, 1], which excludes the p50. The interval must contain it and keep the spread it saw.
    groups = [[1.0] * 30] * 7 + [[5.0] * 1000]
    ci = stats.bootstrap_median_ci(groups, seed=0, replicates=2000)
    assert ci.low <= 1.0 and ci.high >= 5.0, ci
    assert ci.low <= float(np.median(np.concatenate(groups))) <= ci.high
    centers = stats.bootstrap_center_ci([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 9.0], seed=0)
    assert centers.low <= 1.0 <= centers.high, centers
