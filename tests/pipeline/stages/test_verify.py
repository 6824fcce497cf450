"""verify's metrics, defined once (parity uses the same SQNR)."""

import math

import numpy as np

from pipeline.stages import parity, verify
from pipeline.core.records import QuantParams


def test_sqnr_db_edges_and_a_known_value():
    ref = np.array([1.0, -1.0, 1.0, -1.0])
    assert verify.sqnr_db(ref, ref * 0.1) == 20.0  # signal/noise = 100
    assert verify.sqnr_db(ref, np.zeros(4)) == math.inf  # no error at all
    assert verify.sqnr_db(np.zeros(4), np.full(4, 0.5)) == -math.inf  # error, no signal
    assert parity.sqnr_db is verify.sqnr_db


def test_compare_reports_lsb_in_the_candidates_scale_and_the_same_sqnr():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 10)).astype(np.float32)
    step = 0.05
    b = a + step * rng.integers(-1, 2, size=a.shape)  # at most one step off
    agree = verify.compare(verify.Scored("ref", a, 1.0),
                           verify.Scored("cand", b.astype(np.float32), 1.0,
                                         output_quant=QuantParams(step, 0)))
    assert agree.max_error_lsb <= 1.0 + 1e-5  # float32 rounding of the shifted values
    assert 0.5 < agree.mean_error_lsb < 0.8    # two thirds of the entries moved a step
    expected = verify.sqnr_db(a.astype(np.float64), (a - b.astype(np.float32)).astype(np.float64))
    assert math.isclose(agree.sqnr_db, expected, rel_tol=1e-9)


def test_agreement_counts_exact_ties_and_near_ties_within_the_tolerance():
    step = 0.25
    # Keras QAT outputs on the int8 grid: row 0 exactly tied (classes 0 and 1), row 1 one
    # step apart, row 2 two steps apart, row 3 a clear winner; the .tflite picks class 1 in
    # rows 0-2 and agrees in row 3
    a = np.array([[1.0, 1.0, 0.0], [1.0, 0.75, 0.0], [1.0, 0.5, 0.0], [2.0, 0.0, 0.0]])
    b = np.array([[0.9, 1.0, 0.0], [0.9, 1.0, 0.0], [0.9, 1.0, 0.0], [2.0, 0.0, 0.0]])
    ref = verify.Scored("keras_qat", a, 1.0)
    cand = verify.Scored("qat_int8", b, 1.0, output_quant=QuantParams(step, 0))
    strict = verify.compare(ref, cand)
    assert strict.top1_agreement == 0.25  # argmax: row 0's tie goes to class 0
    assert strict.top1_agreement_ties == 0.5 and strict.tolerance_lsb == 0.0
    one = verify.compare(ref, cand, tolerance_lsb=1.0)
    assert one.top1_agreement_ties == 0.75 and one.tolerance_lsb == 1.0
    assert verify.compare(ref, cand, tolerance_lsb=2.0).top1_agreement_ties == 1.0
    # per token: (N, T, V) outputs are compared token by token
    seq = verify.compare(verify.Scored("k", a[None], 1.0),
                         verify.Scored("t", b[None], 1.0, output_quant=QuantParams(step, 0)))
    assert seq.top1_agreement_ties == 0.5
