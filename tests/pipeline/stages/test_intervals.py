"""QAT against the best PTQ on the same test samples (stages/intervals.py), on scores whose
per-sample results are chosen: 20 samples, float right on 18, ptq_int8 on 15, aeq_int8 on 16,
qat_int8 on 18."""

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.core.records import Variant
from pipeline.stages import intervals, stats
from pipeline.stages.verify import Scored

Y = np.arange(20) % 4


def scored(name: str, wrong: list[int]) -> Scored:
    """Logits whose argmax is the label except at ``wrong``."""
    pred = Y.copy()
    pred[wrong] = (pred[wrong] + 1) % 4
    return Scored(name, np.eye(4, dtype=np.float32)[pred], float(np.mean(pred == Y)))


def report_with(**wrong) -> SimpleNamespace:
    scores = {Variant(v): scored(v, w) for v, w in wrong.items()}
    return SimpleNamespace(
        inputs=SimpleNamespace(dataset=SimpleNamespace(y_test=Y)),
        floats=SimpleNamespace(accuracy=0.9, score=scored("keras_float", [0, 1])),
        verified=SimpleNamespace(scored=scores, variants={  # every file full-integer
            v: SimpleNamespace(full_int8=v is not Variant.FLOAT32) for v in scores}),
        conv=None)


def test_best_ptq_is_the_most_accurate_and_qat_is_compared_with_it_paired():
    rep = report_with(ptq_int8=[0, 2, 3, 4, 5], aeq_int8=[0, 1, 6, 7],
                      qat_int8=[0, 8])
    assert intervals.best_ptq(rep) is Variant.AEQ_INT8
    c = intervals.qat_vs_best_ptq(rep)
    assert c["best_ptq"] == "aeq_int8" and c["best_ptq_accuracy"] == 0.8
    assert c["ptq_accuracies"] == {"ptq_int8": 0.75, "aeq_int8": 0.8}
    assert c["ptq_loss_pp"] == pytest.approx(10.0) and c["qat_loss_pp"] == pytest.approx(0.0)
    assert c["qat_recovery_pct"] == pytest.approx(100.0)
    p = c["paired"]  # qat wrong on 0, 8; aeq wrong on 0, 1, 6, 7
    assert (p["both_right"], p["only_a_right"], p["only_b_right"], p["both_wrong"]) == \
        (15, 3, 1, 1)
    assert p["ci95"] == list(stats.newcombe_paired(15, 3, 1, 1))
    assert p["mcnemar_p"] == stats.mcnemar_exact(3, 1)
    assert c["qat_not_worse_beyond_ci"] and c["qat_within_best_ptq_ci"]
    f = c["best_ptq_vs_float"]  # aeq vs float (wrong on 0, 1): 2 pairs only float gets right
    assert f["only_b_right"] == 2 and f["only_a_right"] == 0


def test_ptq_that_loses_nothing_has_no_recovery_and_ties_go_to_ptq_int8():
    rep = report_with(ptq_int8=[0, 1], aeq_int8=[0, 1], qat_int8=[0, 1, 2])
    c = intervals.qat_vs_best_ptq(rep)
    assert c["best_ptq"] == "ptq_int8" and c["ptq_loss_pp"] == pytest.approx(0.0)
    assert c["qat_recovery_pct"] is None
    assert c["paired"]["difference"] == pytest.approx(-0.05)
    assert c["qat_not_worse_beyond_ci"]  # one sample of 20 is noise
    line = intervals._comparison_line(c)
    assert "PTQ loses nothing vs float here." in line and "not worse beyond" in line


def test_qat_worse_beyond_the_interval_is_said():
    rep = report_with(ptq_int8=[], qat_int8=list(range(12)))
    rep.floats.accuracy = 1.0
    c = intervals.qat_vs_best_ptq(rep)
    assert not c["qat_not_worse_beyond_ci"] and not c["qat_within_best_ptq_ci"]
    assert "**QAT is worse beyond the interval.**" in intervals._comparison_line(c)


def test_no_comparison_without_qat_or_ptq():
    assert intervals.qat_vs_best_ptq(report_with(ptq_int8=[1])) is None
    assert intervals.qat_vs_best_ptq(report_with(float32=[1], qat_int8=[1])) is None
