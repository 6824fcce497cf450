"""benchmarks/equal_budget_ptq.py on the session's real `qat run digits_cnn` directory: the
float model fine-tuned with the run's QAT schedule, converted with the converter's PTQ, and
paired with the run's own qat_int8.tflite."""

import importlib.util
import json
import re

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("equal_budget", REPO / "benchmarks" /
                                              "equal_budget_ptq.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_prints_the_paired_comparison_with_the_runs_qat_model(demo_run, capsys):
    code, run_dir = demo_run
    assert code == 0
    assert bench.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    pct = {k: float(v) for k, v in re.findall(r"^(\S+(?: \S+)*?)\s+([\d.]+) %$", out, re.M)}
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["model"]: r for r in report["accuracy_ci95"]["rows"]}
    # the run's qat_int8 is re-scored, not re-made: the same accuracy as its report
    assert pct["qat_int8 (the run's)"] == pytest.approx(100 * rows["qat_int8"]["accuracy"],
                                                        abs=0.005)
    assert pct["float before fine-tune"] == pytest.approx(
        100 * report["keras"]["float_accuracy"], abs=0.005)
    assert 80 <= pct["float after fine-tune"] <= 100 and 80 <= pct["ptq_int8 after fine-tune"]
    m = re.search(r"QAT - equal-budget PTQ \(ptq_int8\) = ([+-][\d.]+) pp, paired 95 % CI "
                  r"([+-][\d.]+) to "
                  r"([+-][\d.]+) pp", out)
    diff, lo, hi = map(float, m.groups())
    assert lo <= diff <= hi
    assert diff == pytest.approx(pct["qat_int8 (the run's)"] - pct["ptq_int8 after fine-tune"],
                                 abs=0.011)


def test_a_4bit_run_is_paired_with_the_4bit_ptqs(w4_run, capsys):
    from pipeline.stages import peers

    code, run_dir = w4_run
    assert code == 0
    if not peers.available():
        pytest.skip("the 4-bit PTQs are ai-edge-quantizer's (the zoo extra), not installed")
    assert bench.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    pct = {k: float(v) for k, v in re.findall(r"^(\S+(?: \S+)*?)\s+([\d.]+) %$", out, re.M)}
    assert {"aeq_w4a8 after fine-tune", "aeq_w4a8_mse after fine-tune",
            "qat_w4a8 (the run's)"} <= set(pct)
    m = re.search(r"QAT - equal-budget PTQ \((aeq_w4a8(?:_mse)?)\) = ([+-][\d.]+) pp", out)
    best, diff = m.group(1), float(m.group(2))
    assert pct[f"{best} after fine-tune"] == max(pct["aeq_w4a8 after fine-tune"],
                                                 pct["aeq_w4a8_mse after fine-tune"])
    assert diff == pytest.approx(pct["qat_w4a8 (the run's)"] - pct[f"{best} after fine-tune"],
                                 abs=0.011)
