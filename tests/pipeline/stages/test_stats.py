"""Interval and test arithmetic against published values (stages/stats.py)."""

import math

import numpy as np
import pytest

from pipeline.stages import stats


@pytest.mark.parametrize("k, n, lo, hi", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
    # method 3 (Wilson score), to the 4 decimals printed there
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_published_values(k, n, lo, hi):
    got = stats.wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


@pytest.mark.parametrize("n", [1, 7, 450, 10_000])
def test_wilson_at_0_of_n_and_n_of_n_is_exact_and_not_empty(n):
    z2 = stats.Z95 ** 2
    assert stats.wilson(0, n) == (0.0, pytest.approx(z2 / (n + z2)))
    assert stats.wilson(n, n) == (pytest.approx(n / (n + z2)), 1.0)
    lo, hi = stats.wilson(n // 2, n)
    assert 0.0 < lo < (n // 2) / n < hi < 1.0 or n == 1


def test_wilson_edge_cases_and_bad_counts():
    assert stats.wilson(0, 0) == (0.0, 1.0)  # no sample: no information
    for k, n in ((-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            stats.wilson(k, n)
    # symmetric: k/n and (n-k)/n mirror each other
    lo, hi = stats.wilson(3, 11)
    assert stats.wilson(8, 11) == pytest.approx((1 - hi, 1 - lo))


def test_mcnemar_exact_known_values():
    # 6 vs 16 discordant pairs: 2 * P(X <= 6), X ~ Binomial(22, 1/2) = 2 * 110056 / 2**22
    assert stats.mcnemar_exact(6, 16) == pytest.approx(2 * 110056 / 2 ** 22, rel=1e-12)
    assert stats.mcnemar_exact(16, 6) == stats.mcnemar_exact(6, 16)
    assert stats.mcnemar_exact(0, 0) == 1.0 and stats.mcnemar_exact(3, 3) == 1.0
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_exact(0, 1) == 1.0  # one discordant pair proves nothing


def test_mcnemar_with_thousands_of_discordant_pairs():
    """Per-token comparisons of a language model have tens of thousands of discordant pairs;
    2.0 ** n overflows a float past n = 1023. Log-space summation from n = 1001 on: it meets
    the integer sum at the switch, matches the normal approximation (continuity-corrected,
    accurate at this n) far out, and stays in [0, 1]."""
    n = stats.EXACT_MAX_N
    b = n // 2 - 20
    exact = 2 * sum(math.comb(n + 1, i) for i in range(b + 1)) / 2 ** (n + 1)
    assert stats.mcnemar_exact(b, n + 1 - b) == pytest.approx(exact, rel=1e-9)
    b, c = 6000, 6200  # n = 12,200: z = (200 - 1) / sqrt(12,200) = 1.80
    z = (abs(b - c) - 1) / math.sqrt(b + c)
    normal = math.erfc(z / math.sqrt(2))
    assert stats.mcnemar_exact(b, c) == pytest.approx(normal, rel=0.01)
    assert stats.mcnemar_exact(5000, 9000) == pytest.approx(0.0, abs=1e-200)
    assert stats.mcnemar_exact(7000, 7000) == 1.0


def test_newcombe_paired_matches_the_published_example():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), the
    # paired 2x2 example of chapter 8 (Cavo et al. 2012): 59, 6 / 16, 80 ->
    # estimate -0.0621, 95 % CI -0.1186 to -0.0046 (Newcombe square-and-add)
    lo, hi = stats.newcombe_paired(59, 6, 16, 80)
    assert (lo, hi) == pytest.approx((-0.1186, -0.0046), abs=5e-5)


def test_newcombe_paired_edges():
    # identical results: the difference is 0, its interval symmetric around it (not empty:
    # 50 samples cannot prove the two models equal), narrower when the pairs correlate
    lo, hi = stats.newcombe_paired(50, 0, 0, 0)
    assert lo == pytest.approx(-hi) and 0 < hi < 0.1
    lo2, hi2 = stats.newcombe_paired(40, 0, 0, 10)
    assert lo2 == pytest.approx(-hi2) and 0 < hi2 < 0.1
    lo, hi = stats.newcombe_paired(0, 10, 0, 0)  # A always right, B never
    assert hi == 1.0 and 0 < lo < 1
    assert stats.newcombe_paired(0, 0, 0, 0) == (-1.0, 1.0)


def test_paired_counts_the_table_from_per_sample_results():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 0], bool)
    b = np.array([1, 0, 1, 1, 0, 1, 0, 0], bool)
    p = stats.paired("qat_int8", a, "ptq_int8", b)
    assert (p.both_right, p.only_a_right, p.only_b_right, p.both_wrong) == (3, 2, 1, 2)
    assert p.difference == pytest.approx(1 / 8) and p.samples == 8
    assert p.ci95 == stats.newcombe_paired(3, 2, 1, 2)
    assert p.mcnemar_p == stats.mcnemar_exact(2, 1) == 1.0
    assert not p.a_worse_beyond_ci
    d = p.to_dict()
    assert d["ci95"] == list(p.ci95) and d["test"] == "McNemar exact, two-sided"
    with pytest.raises(ValueError):
        stats.paired("a", a, "b", b[:-1])


def test_paired_says_worse_only_when_the_whole_interval_is_below_zero():
    y = np.ones(400, bool)
    worse = y.copy()
    worse[:40] = False  # 10 pp worse on 400 samples: significant
    assert stats.paired("a", worse, "b", y).a_worse_beyond_ci
    slightly = y.copy()
    slightly[:1] = False  # one sample: noise
    assert not stats.paired("a", slightly, "b", y).a_worse_beyond_ci
    assert math.isclose(stats.paired("a", slightly, "b", y).difference, -1 / 400)
