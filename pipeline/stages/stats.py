"""Statistics of test accuracies: how sure a difference between two variants is.

- ``wilson``: the Wilson score interval of a binomial proportion (an accuracy k/n). Unlike the
  normal approximation p ± z·sqrt(p(1-p)/n) it stays inside [0, 1], is not empty at 0/n or
  n/n, and covers close to its nominal level at small n (Newcombe 1998, "Two-sided confidence
  intervals for the single proportion", method 3).
- ``paired``: two models scored on the *same* test samples. Their accuracies are correlated
  (most samples are right for both), so comparing two independent intervals would be far too
  cautious. ``newcombe_paired`` is the interval of the difference of paired proportions built
  from the two Wilson intervals and the correlation of the pairs (Newcombe 1998, "Improved
  confidence intervals for the difference between binomial proportions based on paired data",
  method 10); ``mcnemar_exact`` is the exact (conditional, binomial) McNemar test on the
  discordant pairs: two-sided p of "both models are equally accurate".

Pure Python and numpy: no SciPy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: two-sided 95 %
INTERVAL = "Wilson score, 95 %"
PAIRED_INTERVAL = "Newcombe paired (method 10, from Wilson intervals), 95 %"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials; (0, 1) when n is 0."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exact ends at 0/n and n/n (the formula's rounding could leave 1e-17 outside)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


EXACT_MAX_N = 1000  # discordant pairs up to which McNemar's tail is summed in integers


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided p-value of the exact McNemar test: ``b`` pairs where only the first model
    is right, ``c`` where only the second is; under "equally accurate" b ~ Binomial(b+c, 1/2).
    1.0 when there is no discordant pair."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # sum of C(n, i) / 2^n for i <= k, doubled (the binomial(n, 1/2) is symmetric)
    if n <= EXACT_MAX_N:  # exact integers
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    else:  # 2.0 ** n overflows a float past n = 1023: the same sum in log space
        logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                for i in range(k + 1)]
        top = max(logs)
        tail = math.exp(top + math.log(sum(math.exp(v - top) for v in logs))
                        - n * math.log(2.0))
    return min(1.0, 2.0 * tail)


def newcombe_paired(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float]:
    """95 % interval of p1 - p2 for paired outcomes: ``a`` pairs right for both, ``b`` right
    only for the first, ``c`` only for the second, ``d`` for neither; p1 = (a+b)/n,
    p2 = (a+c)/n. Newcombe's method 10, with his continuity-corrected correlation estimate."""
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins:
        num = a * d - b * c
        num = num - n / 2 if num > n / 2 else (0.0 if num >= 0 else num)
        phi = num / math.sqrt(margins)
    lo = (p1 - p2) - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
                                   + (u2 - p2) ** 2))
    hi = (p1 - p2) + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2)
                                   + (p2 - l2) ** 2))
    return max(-1.0, lo), min(1.0, hi)


@dataclass(frozen=True)
class Paired:
    """Model A vs model B on the same samples: counts of the 2x2 table, the accuracy
    difference A - B with its interval, McNemar's exact p."""

    a_name: str
    b_name: str
    samples: int
    both_right: int
    only_a_right: int
    only_b_right: int
    both_wrong: int
    difference: float               # accuracy A - accuracy B (a fraction)
    ci95: tuple[float, float]       # of that difference
    mcnemar_p: float

    @property
    def a_worse_beyond_ci(self) -> bool:
        """A is less accurate than B and the whole interval is below 0."""
        return self.ci95[1] < 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ci95=list(self.ci95), interval=PAIRED_INTERVAL, test="McNemar exact, two-sided",
                 a_worse_beyond_ci=self.a_worse_beyond_ci)
        return d


def paired(a_name: str, a_right: np.ndarray, b_name: str, b_right: np.ndarray) -> Paired:
    """Compare two models from their per-sample correctness on the same samples."""
    ra, rb = np.asarray(a_right, dtype=bool), np.asarray(b_right, dtype=bool)
    if ra.shape != rb.shape or ra.ndim != 1:
        raise ValueError(f"per-sample results differ in shape: {ra.shape} vs {rb.shape}")
    a = int(np.sum(ra & rb))
    b = int(np.sum(ra & ~rb))
    c = int(np.sum(~ra & rb))
    d = int(np.sum(~ra & ~rb))
    n = len(ra)
    return Paired(a_name, b_name, n, a, b, c, d, (b - c) / n if n else 0.0,
                  newcombe_paired(a, b, c, d), mcnemar_exact(b, c))
