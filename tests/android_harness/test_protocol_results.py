"""Schedule, labels, configuration checks, and the results document/tables."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import numpy as np
import pytest

from android_harness import results
from android_harness.errors import UsageError
from android_harness.protocol import Protocol, TargetRun, make_schedule
from android_harness.records import BenchConfig, Measurement, ModelInfo, model_infos

SEED = 0


def infos(*labels):
    return [ModelInfo(l, f"/m/{l}.tflite", f"{i:064x}", 100) for i, l in enumerate(labels)]


def test_schedule_visits_every_pair_once_per_round_in_seeded_order():
    models, configs = infos("float32", "ptq_int8", "qat_int8"), [BenchConfig(1), BenchConfig(4)]
    jobs = make_schedule(models, configs, repeats=4, seed=7)
    assert len(jobs) == 24 and [j.order for j in jobs] == list(range(24))
    for r in range(4):
        rnd = [(j.model.label, j.config.key) for j in jobs if j.repeat == r]
        assert len(set(rnd)) == 6
    orders = [tuple((j.model.label, j.config.key) for j in jobs if j.repeat == r)
              for r in range(4)]
    assert len(set(orders)) > 1  # shuffled, not the same order every round
    assert jobs == make_schedule(models, configs, repeats=4, seed=7)
    assert jobs != make_schedule(models, configs, repeats=4, seed=8)


def test_labels_are_stems_made_unique_with_folders(tmp_path):
    from tests.tflite_craft import tiny_model

    paths = []
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        for name in ("float32", "qat_int8"):
            p = tmp_path / d / f"{name}.tflite"
            p.write_bytes(tiny_model(len(paths) + 1))  # model_infos pre-checks real models
            paths.append(p)
    assert [m.label for m in model_infos(paths)] == ["a/float32", "a/qat_int8", "b/float32",
                                                     "b/qat_int8"]
    assert [m.label for m in model_infos(paths[:2])] == ["float32", "qat_int8"]
    with pytest.raises(UsageError, match="given twice"):
        model_infos([paths[0], paths[0]])
    with pytest.raises(UsageError, match="does not exist"):
        model_infos([tmp_path / "nope.tflite"])


@pytest.mark.parametrize("kwargs, words", [
    ({"repeats": 0}, "repeats"), ({"min_runs": 0}, "min_runs"),
    ({"min_seconds": 5, "max_seconds": 1}, "below --min-seconds"),
    ({"cooldown_s": -1}, "cooldown_s"), ({"stability_cv": 1.5}, "stability_cv"),
])
def test_protocol_validation(kwargs, words):
    with pytest.raises(UsageError, match=words):
        Protocol(**kwargs)


def test_config_validation_and_keys():
    assert BenchConfig(4, "gpu").key == "t4/gpu"
    assert BenchConfig(1, "xnnpack", "f0").key == "t1/xnnpack/mask=f0"
    assert BenchConfig(1, core_mask="f0").cores() == [4, 5, 6, 7]
    for bad in ({"threads": 0}, {"threads": 1, "delegate": "tpu"},
                {"threads": 1, "core_mask": "0"}):
        with pytest.raises(UsageError):
            BenchConfig(**bad)


def _measure(model, cfg, repeat, lat, status="ok"):
    lat = np.asarray(lat)
    if status != "ok":
        return Measurement(model, cfg, repeat, repeat, status="failed", error="device gone")
    return Measurement(model, cfg, repeat, repeat, latencies_us=lat.tolist(), count=lat.size,
                       mean_us=float(lat.mean()), std_us=float(lat.std()),
                       min_us=float(lat.min()), max_us=float(lat.max()),
                       median_us=float(np.median(lat)), init_us=100.0 + repeat,
                       first_us=50.0, memory={"overall_mb": 1.0 + repeat})


def _doc(measurements, models=("float32", "qat_int8"), repeats=3):
    rng = np.random.default_rng(SEED)
    cfg = BenchConfig(1)
    run = TargetRun("host", "host", measurements=measurements, tool={"name": "x"},
                    conditions_start={"cpu_model": "cpu", "cores": 2})
    return results.build(run_id="r1", command="host", started_at="t0", finished_at="t1",
                         protocol=Protocol(repeats=repeats, seed=SEED),
                         models=infos(*models), configs=[cfg], runs=[run], baseline="float32",
                         harness_version="test"), rng


def test_summary_ratio_and_tables():
    rng = np.random.default_rng(SEED)
    data = {("float32", r): rng.normal(1000, 20, 300) for r in range(3)}
    data |= {("qat_int8", r): rng.normal(480, 10, 300) for r in range(3)}
    ms = [_measure(m, "t1/xnnpack", r, lat) for (m, r), lat in data.items()]
    doc, _ = _doc(ms)
    f32, i8 = doc["results"]
    pooled = np.concatenate([data[("qat_int8", r)] for r in range(3)])
    assert i8["p50_us"] == pytest.approx(np.median(pooled))
    assert i8["p90_us"] == pytest.approx(np.percentile(pooled, 90))
    assert i8["ratio_to_baseline"] == pytest.approx(i8["p50_us"] / f32["p50_us"])
    assert i8["init_us"] == 101.0 and i8["memory_overall_mb"] == 2.0
    assert i8["cv_of_repeat_medians"] == pytest.approx(
        np.std([np.median(data[("qat_int8", r)]) for r in range(3)], ddof=1)
        / np.mean([np.median(data[("qat_int8", r)]) for r in range(3)]))
    json.dumps(doc, allow_nan=False)  # strict JSON
    md = results.markdown(doc)
    assert f"| {i8['ratio_to_baseline']:.2f}x |" in md and "| 3/3 |" in md
    rows = list(csv.DictReader(io.StringIO(results.csv_text(doc))))
    assert [r["model"] for r in rows] == ["float32", "qat_int8"]
    assert float(rows[1]["ratio"]) == pytest.approx(i8["ratio_to_baseline"], abs=1e-4)


def test_partial_and_failed_results():
    rng = np.random.default_rng(SEED)
    ms = [_measure("float32", "t1/xnnpack", 0, rng.normal(1000, 5, 100)),
          _measure("float32", "t1/xnnpack", 1, [], status="failed"),
          _measure("qat_int8", "t1/xnnpack", 0, [], status="failed")]
    doc, _ = _doc(ms, repeats=2)
    f32, i8 = doc["results"]
    assert f32["status"] == "partial" and f32["repeats_ok"] == 1
    assert f32["stability"]["verdict"] == "insufficient"
    assert i8["status"] == "failed" and i8["errors"] == ["device gone"]
    assert i8["ratio_to_baseline"] is None
    md = results.markdown(doc)
    assert "FAILED" in md and "Failures:" in md and "device gone" in md


def test_long_latency_series_are_subsampled_in_the_file_only():
    rng = np.random.default_rng(SEED)
    lat = rng.normal(5, 0.1, results.MAX_STORED_INVOKES * 3 + 7)
    doc, _ = _doc([_measure("float32", "t1/xnnpack", 0, lat)], models=("float32",), repeats=1)
    (r,) = doc["results"]
    assert r["invokes"] == lat.size and r["p50_us"] == pytest.approx(np.median(lat))
    stored = r["repeat_measurements"][0]
    assert len(stored["latencies_us"]) <= results.MAX_STORED_INVOKES
    assert "statistics use all" in stored["latencies_stored"]


def test_write_produces_the_three_files(tmp_path):
    rng = np.random.default_rng(SEED)
    doc, _ = _doc([_measure("float32", "t1/xnnpack", 0, rng.normal(10, 1, 50))],
                  models=("float32",), repeats=1)
    paths = results.write(doc, tmp_path / "o")
    assert json.loads(open(paths["json"]).read())["schema_version"] == results.SCHEMA_VERSION
    assert open(paths["markdown"]).read() == results.markdown(doc)
    assert Counter(p.suffix for p in (tmp_path / "o").iterdir()) == {".json": 1, ".md": 1,
                                                                      ".csv": 1}
