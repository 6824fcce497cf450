"""benchmarks/zoo.py's table on a real run directory (the session's `qat run digits_cnn`) and
real host latencies (android-harness host, a very short protocol)."""

import importlib.util
import json
import shutil

import pytest

from pipeline.core.records import Variant
from pipeline.stages import peers
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("zoo_bench", REPO / "benchmarks" / "zoo.py")
zoo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoo)

QUICK = ["--threads", "1", "--repeats", "2", "--min-runs", "5", "--min-seconds", "0.05",
         "--warmup-runs", "2", "--warmup-seconds", "0", "--seed", "0"]


@pytest.fixture(scope="module")
def zoo_doc(demo_run, tmp_path_factory):
    code, run_dir = demo_run
    assert code == 0
    out = tmp_path_factory.mktemp("zoo")
    harness = zoo.measure_host(run_dir, out / "harness", QUICK)
    runs = {"digits_cnn": {"exit_code": 0, "seconds": 61.5, "harness_seconds": 3.0}}
    return run_dir, zoo.build(["digits_cnn"], run_dir.parent, runs, {"digits_cnn": harness},
                              120.0), out


def test_one_row_per_variant_with_accuracy_interval_size_and_latency(zoo_doc):
    run_dir, doc, _ = zoo_doc
    report = json.loads((run_dir / "report.json").read_text())
    expected = [v.value for v in (Variant.FLOAT32, Variant.PTQ_INT8, Variant.AEQ_INT8,
                                  Variant.QAT_INT8)  # the demo's variants, its peer added
                if v is not Variant.AEQ_INT8 or peers.available()]
    assert [r["variant"] for r in doc["rows"]] == expected
    by_variant = {v["variant"]: v for v in report["variants"]}
    for r in doc["rows"]:
        v = by_variant[r["variant"]]
        assert r["model"] == "digits_cnn" and r["size_bytes"] == v["size_bytes"]
        assert r["accuracy"] == pytest.approx(v["accuracy"])
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        assert r["host_p50_us"] > 0 and r["host_ratio_to_float32"] > 0
        assert r["full_int8"] is (None if r["variant"] == "float32" else True)
        assert r["io"] == ("float32" if r["variant"] == "float32" else "int8")
    rows = {r["variant"]: r for r in doc["rows"]}
    assert rows["float32"]["host_ratio_to_float32"] == pytest.approx(1.0)
    assert rows["qat_int8"]["agreement_with"] == "keras_qat"
    assert rows["ptq_int8"]["agreement_with"] == "keras_float"


def test_model_summary_and_targets(zoo_doc):
    run_dir, doc, _ = zoo_doc
    (s,) = doc["models"]
    report = json.loads((run_dir / "report.json").read_text())
    assert s["float_accuracy"] == report["keras"]["float_accuracy"]
    assert s["best_ptq"] in ("ptq_int8", "aeq_int8") and s["pipeline_seconds"] == 61.5
    assert s["layer_parity"]["compared"] > 0 and s["layer_parity"]["first_divergent"] is None
    assert s["cpu"] and doc["cpu"] == s["cpu"]
    assert s["ptq_calibration"]["samples"] == 200
    results = {t["target"]: t for t in doc["targets"]}
    assert list(results) == ["float >= 90 % and < 99.5 %", "QAT within 0.3 pp of float",
                             "QAT not worse than best PTQ beyond CI",
                             "QAT recovers >= 80 % of the PTQ loss",
                             "no diverging layer (layer parity)", "make zoo <= 45 min"]
    assert results["float >= 90 % and < 99.5 %"]["result"] == "exempt"
    assert results["make zoo <= 45 min"]["result"] == "PASS"
    recovery = results["QAT recovers >= 80 % of the PTQ loss"]
    graded = s["ptq_loss_pp"] > 0 and s["best_ptq_vs_float"]["a_worse_beyond_ci"]
    assert recovery["result"] == ("n/a" if not graded else
                                  ("PASS" if s["qat_recovery_pct"] >= 80 else "FAIL"))


def test_targets_fail_where_the_numbers_miss(zoo_doc):
    _, doc, _ = zoo_doc
    s = dict(doc["models"][0], model="other", float_accuracy=0.996, qat_loss_pp=0.31,
             ptq_loss_pp=2.0, qat_recovery_pct=79.0, qat_not_worse_beyond_ci=False,
             best_ptq_vs_float={"a_worse_beyond_ci": True, "ci95": [-0.03, -0.01],
                                "mcnemar_p": 0.001},
             layer_parity=dict(doc["models"][0]["layer_parity"], first_divergent="conv"))
    results = {t["target"]: t["result"] for t in zoo.targets([s], 45 * 60 + 1)}
    assert set(results.values()) == {"FAIL"}


def test_recovery_is_not_graded_where_the_ptq_loss_is_noise(zoo_doc):
    """A PTQ loss whose paired interval vs float straddles 0 gets n/a, with the recovery and
    the interval written out; the same numbers with the interval below 0 are graded."""
    _, doc, _ = zoo_doc
    noise = {"a_worse_beyond_ci": False, "ci95": [-0.0065, 0.0011], "mcnemar_p": 0.19}
    s = dict(doc["models"][0], model="kws", ptq_loss_pp=0.27, qat_recovery_pct=63.0,
             best_ptq_vs_float=noise)
    (t,) = [t for t in zoo.targets([s], 60.0) if t["target"].startswith("QAT recovers")]
    assert t["result"] == "n/a" and t["passed"]
    assert "recovers 63 %" in t["detail"] and "-0.65 to +0.11 pp" in t["detail"]
    s["best_ptq_vs_float"] = dict(noise, a_worse_beyond_ci=True, ci95=[-0.006, -0.001])
    (t,) = [t for t in zoo.targets([s], 60.0) if t["target"].startswith("QAT recovers")]
    assert t["result"] == "FAIL" and not t["passed"]


def test_markdown_and_files(zoo_doc):
    _, doc, out = zoo_doc
    zoo.write(doc, out)
    assert json.loads((out / "zoo.json").read_text()) == json.loads(json.dumps(doc))
    md = (out / "zoo.md").read_text()
    assert "| digits_cnn | `qat_int8` |" in md and "## Targets" in md
    assert "| digits_cnn | float >= 90 % and < 99.5 % | exempt |" in md


def test_main_rebuilds_the_table_from_existing_runs(demo_run, tmp_path, capsys):
    _, run_dir = demo_run
    shutil.copytree(run_dir, tmp_path / "digits_cnn")
    code = zoo.main(["--models", "digits_cnn", "--output", str(tmp_path), "--skip-run",
                     "--no-latency"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "PASS  digits_cnn: QAT within 0.3 pp of float" in text
    assert "n/a  zoo: make zoo <= 45 min" in text  # no runs timed: nothing to judge
    assert (tmp_path / "zoo" / "zoo.md").is_file()
    with pytest.raises(SystemExit):
        zoo.main(["--models", "nope", "--output", str(tmp_path), "--skip-run"])


def test_a_language_model_gets_its_own_rows_and_targets(lm_run, tmp_path):
    """The session's `qat run char_lm` slice: its rows come from task_metrics (token accuracy,
    perplexity with intervals), its targets are in perplexity, and the markdown has its
    table and a line of text written by qat_int8.tflite."""
    code, run_dir = lm_run
    assert code == 0
    report = json.loads((run_dir / "report.json").read_text())
    doc = zoo.build(["char_lm"], run_dir.parent, {"char_lm": {"exit_code": 0, "seconds": 90.0}},
                    {}, 95.0)
    assert doc["models"] == [] and doc["rows"] == []
    (s,) = doc["language_models"]
    rows = {r["variant"]: r for r in doc["lm_rows"]}
    assert set(rows) == {"float32", "ptq_int8", "qat_int8"}
    metrics = {r["model"]: r for r in report["task_metrics"]["rows"]}
    for v, r in rows.items():
        assert r["perplexity"] == metrics[v]["perplexity"]
        assert r["perplexity_ci95"][0] <= r["perplexity"] <= r["perplexity_ci95"][1]
    assert s["qat_perplexity"] == pytest.approx(metrics["qat_int8"]["perplexity"])
    results = {t["target"]: t for t in doc["targets"] if t["model"] == "char_lm"}
    qi = s["qat_increase"]["increase_pct"]
    assert results["QAT perplexity within 3 % of float"]["result"] == \
        ("PASS" if qi <= 3.0 else "FAIL")
    assert results["run <= 20 min"]["result"] == "PASS"
    assert results["no diverging layer (layer parity)"]["result"] == "PASS"
    md = zoo.markdown(doc)
    assert "## Language models" in md and "| char_lm | `qat_int8` |" in md
    assert "`qat_int8.tflite`, greedy" in md
