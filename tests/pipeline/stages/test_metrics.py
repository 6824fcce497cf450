"""Task metrics (stages/metrics.py): cross-entropy, perplexity, token accuracy, MSE / MAE and
their seeded bootstrap intervals, checked against hand computations."""

import math

import numpy as np
import pytest

from pipeline.stages import metrics


def test_uniform_logits_have_the_vocabulary_as_perplexity():
    v = 7
    m = metrics.sequence_metrics(np.zeros((5, 4, v)), np.zeros((5, 4), int), True)
    assert m["cross_entropy"] == pytest.approx(math.log(v))
    assert m["perplexity"] == pytest.approx(v)
    assert m["tokens"] == 20 and m["sequences"] == 5
    # every token predicts class 0 (ties: argmax takes the first) and every target is 0
    assert m["token_accuracy"] == 1.0


def test_cross_entropy_matches_a_hand_computation():
    logits = np.array([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])
    y = np.array([[0, 2]])
    lse = [math.log(math.exp(2) + 1 + math.exp(-1)), math.log(2 + math.e)]
    want = ((lse[0] - 2.0) + (lse[1] - 0.0)) / 2
    m = metrics.sequence_metrics(logits, y, True)
    assert m["cross_entropy"] == pytest.approx(want)
    assert m["perplexity"] == pytest.approx(math.exp(want))
    assert m["token_accuracy"] == 0.5
    # the same distribution given as probabilities
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert metrics.sequence_metrics(p, y, False)["cross_entropy"] == pytest.approx(want)


def test_padded_positions_count_in_no_metric():
    """A padded target (-1) changes nothing: the metrics equal those of the real tokens."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5, 4))
    y = rng.integers(0, 4, (6, 5))
    padded = y.copy()
    padded[:, 3:] = metrics.PAD
    padded[0, :] = [1, metrics.PAD, metrics.PAD, metrics.PAD, metrics.PAD]
    keep = padded != metrics.PAD
    m = metrics.sequence_metrics(logits, padded, True)
    assert m["tokens"] == int(keep.sum()) == 16
    nll = metrics.token_nll(logits, np.where(keep, padded, 0), True)[keep]
    assert m["cross_entropy"] == pytest.approx(nll.mean())
    assert m["token_accuracy"] == pytest.approx(np.mean(logits.argmax(-1)[keep] ==
                                                        padded[keep]))
    assert metrics.primary("sequence", logits, padded) == pytest.approx(m["token_accuracy"])
    assert metrics.mean_nll(logits, padded, True) == pytest.approx(nll.mean())
    assert (metrics.token_nll(logits, padded, True)[~keep] == 0).all()
    # paired: A = B gives 0 %, and padding does not dilute a real difference
    assert metrics.paired_increase("sequence", logits, logits, padded, True)["increase_pct"] \
        == pytest.approx(0.0)
    worse = logits.copy()
    worse[~keep] += 5.0 * rng.normal(size=worse[~keep].shape)  # changes only padded positions
    assert metrics.paired_increase("sequence", worse, logits, padded, True)["increase_pct"] \
        == pytest.approx(0.0)


def test_probability_zeros_are_floored_not_infinite():
    p = np.array([[[1.0, 0.0]]])
    m = metrics.sequence_metrics(p, np.array([[1]]), False)
    assert math.isfinite(m["cross_entropy"])
    assert m["cross_entropy"] == pytest.approx(-math.log(metrics.PROB_FLOOR), rel=1e-3)


def test_bootstrap_interval_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 6, 5))
    y = rng.integers(0, 5, (40, 6))
    a, b = (metrics.sequence_metrics(z, y, True) for _ in range(2))
    assert a == b  # the same seed, the same interval
    for key in ("cross_entropy", "perplexity", "token_accuracy"):
        lo, hi = a[f"{key}_ci95"]
        assert lo < a[key] < hi
    # perplexity's interval is exp() of the cross-entropy's
    assert a["perplexity_ci95"] == pytest.approx([math.exp(v) for v in a["cross_entropy_ci95"]])


def test_paired_perplexity_increase_is_the_ratio_of_perplexities():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(30, 5, 4))
    y = rng.integers(0, 4, (30, 5))
    worse = z * 0.5  # flatter: a higher perplexity on these targets or a lower one
    d = metrics.paired_increase("sequence", worse, z, y, True)
    pa = metrics.sequence_metrics(worse, y, True)["perplexity"]
    pb = metrics.sequence_metrics(z, y, True)["perplexity"]
    assert d["increase_pct"] == pytest.approx(100 * (pa / pb - 1))
    assert d["ci95"][0] <= d["increase_pct"] <= d["ci95"][1]
    same = metrics.paired_increase("sequence", z, z, y, True)
    assert same["increase_pct"] == 0 and same["ci95"] == [0.0, 0.0]


def test_regression_metrics():
    out = np.array([[1.0], [2.0], [4.0]])
    y = np.array([1.0, 1.0, 1.0])
    m = metrics.regression_metrics(out, y)
    assert m["mse"] == pytest.approx((0 + 1 + 9) / 3)
    assert m["mae"] == pytest.approx((0 + 1 + 3) / 3)
    assert m["mse_ci95"][0] <= m["mse"] <= m["mse_ci95"][1]
    inc = metrics.paired_increase("regression", out * 2, out, y, True)
    assert inc["metric"] == "mse"
    assert inc["increase_pct"] == pytest.approx(100 * (((1 + 9 + 49) / 3) / m["mse"] - 1))
    assert math.isnan(metrics.primary("regression", out, y))
