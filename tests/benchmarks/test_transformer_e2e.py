"""benchmarks/transformer_e2e.py's parts (its full run trains two transformers and takes
~2.5 min: it is a benchmark, run by hand): the model it builds goes through annotate in
both Kerases' shape, the Wilson interval, and the summary read from a real run's report."""

import importlib.util

import pytest

from pipeline.core import keras_env
from pipeline.stages import annotate
from tests.conftest import REPO

PATH = REPO / "benchmarks" / "transformer_e2e.py"
spec = importlib.util.spec_from_file_location("transformer_e2e", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_classifier_is_a_transformer_qat_rewrites(env):
    keras_env.set_seed(0)
    model = bench.build(env.keras)
    assert model.output_shape == (None, 10)
    _, cov = annotate.prepare(model)
    by = {p.name: p for p in cov.layers}
    assert by["b0_mha"].cls == "MultiHeadAttention" and by["b0_mha"].parts
    assert by["ln_f"].parts and by["b1_ff1"].cls == "SequenceDense"
    assert not [p for p in cov.layers if p.status.value == "fallback"]


def test_keras3_builds_the_same_architecture(env):
    k3 = keras_env.load_keras3()
    m3 = bench.build(k3)
    assert [l.name for l in m3.layers] == [l.name for l in bench.build(env.keras).layers]
    assert m3.count_params() == bench.build(env.keras).count_params()


def test_wilson_interval_known_values():
    lo, hi = bench.wilson(447, 450)
    assert lo == pytest.approx(0.98059, abs=1e-4) and hi == pytest.approx(0.99773, abs=1e-4)
    lo, hi = bench.wilson(450, 450)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.99154, abs=1e-4)


def test_summary_reads_a_real_runs_report(demo_run):
    code, run_dir = demo_run
    s = bench.summarize(run_dir)
    assert s["n"] == 450 and 0.9 <= s["agreement"] <= 1.0
    assert s["ties"] >= s["agreement"]  # counting ties can only add agreement
    assert s["full_int8"] is True and s["keras3"] is False
    assert set(s["accuracy"]) >= {"float32", "ptq_int8", "qat_int8"}
