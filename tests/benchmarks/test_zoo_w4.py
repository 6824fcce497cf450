"""benchmarks/zoo_w4.py on a real 4-bit run (the session's w4_run) and its recovery interval
on hand-counted samples."""

import importlib.util

import numpy as np
import pytest

from pipeline.stages import peers
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("zoo_w4", REPO / "benchmarks" / "zoo_w4.py")
zoo_w4 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoo_w4)


def test_recovery_is_the_share_of_the_ptq_loss_won_back():
    # 100 samples: float right on 90, PTQ on 80, QAT on 88 -> (88 - 80) / (90 - 80) = 80 %
    f = np.arange(100) < 90
    p = np.arange(100) < 80
    q = np.arange(100) < 88
    r = zoo_w4.recovery(f, p, q)
    assert r["recovery_pct"] == pytest.approx(80.0)
    lo, hi = r["ci95"]
    assert lo < 80.0 < hi  # a paired bootstrap interval around the point estimate
    assert r["resamples"] == zoo_w4.BOOTSTRAP
    # PTQ losing nothing: no ratio, and the resamples say so
    none = zoo_w4.recovery(f, f, q)
    assert none["recovery_pct"] is None and none["resamples_without_ptq_loss"] > 0


def test_summary_targets_and_table_from_a_real_4bit_run(w4_run):
    code, run_dir = w4_run
    assert code == 0
    s = zoo_w4.summary("digits_cnn", run_dir, {"exit_code": 0}, None)
    v = s["variants"]
    assert v["qat_w4a8"]["size_bytes"] < v["ptq_int8"]["size_bytes"]
    assert v["qat_w4a8"]["full_int8"] is True
    assert s["params"] > 0
    targets = {t["target"]: t for t in zoo_w4.targets(s)}
    assert targets["LiteRT runs the INT4 file"]["result"] == "PASS"
    assert targets["INT4 file <= 0.6x int8 (>= 1 M params)"]["result"] == "n/a"  # 9 k params
    if peers.available():
        assert s["best_ptq"] in ("aeq_w4a8", "aeq_w4a8_mse")
        assert s["recovery"] is not None
    md = zoo_w4.markdown({"cpu": "this machine", "models": [s], "mixed": [],
                          "targets": list(targets.values())})
    assert "| digits_cnn | `qat_w4a8` |" in md and "QAT recovery" in md
