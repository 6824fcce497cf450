"""Sequence and regression models through the real stages: a tiny per-token Conv1D model on
generated sequences and a tiny regression MLP, trained here, run through QAT, conversion,
verification, gates, report and the reference bundle (re-verified by ``qat verify``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.cli.app import main, parse_args
from pipeline.core import keras_env
from pipeline.stages import config, data
from pipeline.stages.run import run

pytestmark = pytest.mark.slow

V, T = 6, 12


def _sequences(n: int, seed: int):
    """Target at t: (token[t] + token[t-1]) mod V (token[-1] = 0), a causal rule a kernel-2
    causal Conv1D can learn, replaced by a random token a quarter of the time (so perplexity
    and token accuracy have something to measure); inputs are the one-hot tokens (N, T, V)."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, V, (n, T))
    prev = np.concatenate([np.zeros((n, 1), int), tok[:, :-1]], axis=1)
    y = np.where(rng.random((n, T)) < 0.25, rng.integers(0, V, (n, T)), (tok + prev) % V)
    return np.eye(V, dtype=np.float32)[tok], y


@pytest.fixture(scope="module")
def seq_run(env, tmp_path_factory):
    keras = env.keras
    keras_env.set_seed(0)
    x, y = _sequences(700, 0)
    y[::4, -3:] = -1  # every fourth sequence ends in 3 padded positions (metrics.PAD)
    inp = keras.Input((T, V), name="onehot")
    h = keras.layers.Conv1D(24, 2, padding="causal", activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(V)(h))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1))
    model.fit(x[:600], y[:600], epochs=12, batch_size=32, verbose=0)
    ds = data.Dataset("seq", "generated", x[:600], y[:600], x[600:], y[600:])
    out = tmp_path_factory.mktemp("runs")
    cfg = config.load(None, {"output.dir": str(out), "output.name": "seq", "qat.epochs": 1,
                             "qat.range_init_samples": 64, "convert.representative_samples": 64,
                             "convert.variants": ["float32", "ptq_int8", "qat_int8",
                                                  "ptq_16x8"],
                             "gates.max_accuracy_drop_pp": 5.0, "gates.min_agreement": 0.9,
                             "gates.max_perplexity_increase_pct": 25.0})
    result = run(cfg, model=model, dataset=ds, log=lambda *_: None)
    return result, out / "seq", (x[600:], y[600:])


def test_sequence_run_reports_token_metrics_for_every_variant(seq_run):
    result, run_dir, (x, y) = seq_run
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["data"]["task"] == "sequence" and doc["data"]["target_shape"] == [T]
    tm = doc["task_metrics"]
    assert tm["task"] == "sequence" and "bootstrap" in tm["interval"]
    rows = {r["model"]: r for r in tm["rows"]}
    assert set(rows) == {"keras_float", "keras_qat", "float32", "ptq_int8", "qat_int8",
                         "ptq_16x8"}
    real = y != -1
    for r in rows.values():  # padded positions count in no metric
        assert r["tokens"] == real.sum() < y.size and r["sequences"] == len(y)
        assert r["perplexity"] == pytest.approx(math.exp(r["cross_entropy"]))
        assert r["perplexity_ci95"][0] <= r["perplexity"] <= r["perplexity_ci95"][1]
        assert 1.0 <= r["perplexity"] < V  # learned: better than uniform
    # predicting the rule is the best a model can do on these targets; the float model and
    # every variant learned it (within 5 % of that ceiling)
    tok = x.argmax(-1)
    rule = (tok + np.concatenate([np.zeros((len(tok), 1), int), tok[:, :-1]], axis=1)) % V
    best = float(np.mean(y[real] == rule[real]))
    assert 0.7 < best < 0.85
    for r in rows.values():
        assert 0.95 * best <= r["token_accuracy"] <= best + 0.01
    # float32 .tflite is the float model (same math): same perplexity to float tolerance
    assert rows["float32"]["perplexity"] == pytest.approx(rows["keras_float"]["perplexity"],
                                                          rel=1e-4)
    tok = rows["qat_int8"]["per_token"]
    assert tok["tokens"] == y.size and tok["reference"] == "keras_qat"
    assert tok["top1_agreement"] == rows["qat_int8"]["agreement"]
    assert tok["mean_token_max_error_lsb"] <= tok["max_token_error_lsb"]
    cmp = doc["qat_vs_best_ptq"]  # 16x8 is a higher precision: never the "best PTQ"
    assert cmp["metric"] == "perplexity" and cmp["best_ptq"] == "ptq_int8"
    assert set(cmp["ptq_values"]) == {"ptq_int8"}
    inc = cmp["qat_increase_vs_float"]
    assert inc["increase_pct"] == pytest.approx(
        100 * (rows["qat_int8"]["perplexity"] / rows["keras_float"]["perplexity"] - 1))
    assert inc["ci95"][0] <= inc["increase_pct"] <= inc["ci95"][1]
    gates = {g["name"]: g for g in doc["gates"]}
    assert gates["max_perplexity_increase_pct"]["value"] == pytest.approx(
        inc["increase_pct"], abs=1e-3)
    assert gates["full_int8[qat_int8]"]["passed"]
    assert gates["full_16x8[ptq_16x8]"]["passed"]  # full-integer with int16 activations
    v16 = {v["variant"]: v for v in doc["variants"]}["ptq_16x8"]
    assert v16["input_quant"]["dtype"] == "int16" and v16["full_int8"] is True
    assert result.exit_code == 0, result.failed_gates
    md = (run_dir / "report.md").read_text()
    assert "## Sequence metrics with 95 % intervals" in md and "token accuracy" in md


def test_sequence_reference_bundle_verifies_again(seq_run, capsys, tmp_path):
    _, run_dir, (x, y) = seq_run
    code = main(parse_args(["verify", str(run_dir / "qat_int8.tflite"), "--reference",
                            str(run_dir), "--json"]))
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc
    report = json.loads((run_dir / "report.json").read_text())
    qat_acc = next(r for r in report["task_metrics"]["rows"] if r["model"] == "qat_int8")
    assert doc["reference"]["passed"] and doc["reference"]["exact_fraction"] == 1.0
    assert doc["reference"]["accuracy"] == pytest.approx(qat_acc["token_accuracy"])
    # --data with (N, T) targets: the task is found from the .tflite's output
    npz = tmp_path / "seq.npz"
    np.savez(npz, x_train=x, y_train=y, x_test=x, y_test=y)
    code = main(parse_args(["verify", str(run_dir / "qat_int8.tflite"), "--data", str(npz),
                            "--json"]))
    got = json.loads(capsys.readouterr().out)
    assert code == 0 and got["task"] == "sequence"
    assert got["metrics"]["perplexity"] == pytest.approx(qat_acc["perplexity"], rel=1e-6)


@pytest.fixture(scope="module")
def reg_run(env, tmp_path_factory):
    keras = env.keras
    keras_env.set_seed(0)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (800, 4)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.05 * rng.normal(size=800)).astype(
        np.float32)
    inp = keras.Input((4,), name="features")
    h = keras.layers.Dense(32, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x[:700], y[:700], epochs=20, batch_size=32, verbose=0)
    ds = data.Dataset("reg", "generated", x[:700], y[:700], x[700:], y[700:])
    out = tmp_path_factory.mktemp("runs")
    cfg = config.load(None, {"output.dir": str(out), "output.name": "reg", "qat.epochs": 1,
                             "convert.representative_samples": 64,
                             "gates.max_mse_increase_pct": 50.0})
    return run(cfg, model=model, dataset=ds, log=lambda *_: None), out / "reg", y[700:]


def test_regression_run_reports_mse_and_gates_on_it(reg_run):
    result, run_dir, y = reg_run
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["data"]["task"] == "regression"
    rows = {r["model"]: r for r in doc["task_metrics"]["rows"]}
    assert rows["keras_float"]["mse"] < np.var(y)  # learned something
    for r in rows.values():
        assert r["mse_ci95"][0] <= r["mse"] <= r["mse_ci95"][1]
        assert r["mae"] ** 2 <= r["mse"] + 1e-12  # Jensen: MAE^2 <= MSE
    assert rows["qat_int8"]["mean_error_lsb"] is not None
    names = [g["name"] for g in doc["gates"]]
    assert "max_mse_increase_pct" in names and "max_accuracy_drop_pp" not in names
    assert doc["qat_vs_best_ptq"]["metric"] == "mse"
    assert result.exit_code == 0, result.failed_gates
    assert "## Regression metrics with 95 % intervals" in (run_dir / "report.md").read_text()


@pytest.fixture(scope="module")
def two_head_run(env, digits, tmp_path_factory):
    """A digits MLP with two heads: 'digit' (10 logits, the data's targets) and 'parity'
    (2 logits, trained beforehand on odd/even). `data.output = "digit"`: QAT trains the digit
    head (the only targets in the data) and carries the other."""
    keras = env.keras
    keras_env.set_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Dense(48, activation="relu", name="hidden")(
        keras.layers.Flatten(name="flat")(inp))
    model = keras.Model(inp, [keras.layers.Dense(2, name="parity")(h),
                              keras.layers.Dense(10, name="digit")(h)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-2), [loss, loss])
    x, y = digits["x_train"], digits["y_train"]
    model.fit(x, [y % 2, y], epochs=15, batch_size=32, verbose=0)
    ds = data.Dataset("digits", "sklearn", x, y, digits["x_test"], digits["y_test"])
    out = tmp_path_factory.mktemp("runs")
    cfg = config.load(None, {"output.dir": str(out), "output.name": "two", "qat.epochs": 2,
                             "data.output": "digit", "convert.representative_samples": 64,
                             "gates.max_accuracy_drop_pp": 2.0})
    before = [w.copy() for w in model.get_layer("parity").get_weights()]
    return run(cfg, model=model, dataset=ds, log=lambda *_: None), out / "two", before


def test_a_two_output_model_trains_and_scores_the_named_output(two_head_run, digits):
    result, run_dir, parity_before = two_head_run
    assert result.exit_code == 0, result.failed_gates
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["model"]["outputs"] == 10  # the scored head's size, not the first output's
    variants = {v["variant"]: v for v in doc["variants"]}
    assert variants["qat_int8"]["full_int8"] is True
    assert variants["qat_int8"]["accuracy"] > 0.9  # digit accuracy: the scored head
    # the other head is carried (its weights unchanged by training the digit head) and
    # compared by output error in the report
    from pipeline.keras import fallbacks

    q = keras_env.load().tfmot.quantization.keras
    with q.quantize_scope(fallbacks.custom_objects()):
        qat = keras_env.load().keras.models.load_model(run_dir / "keras" / "qat_model.h5",
                                                        compile=False)
    kernel = [w for w in qat.get_layer("quant_parity").weights if "kernel" in w.name
              and "quant" not in w.name.split("/")[-1]][0].numpy()
    np.testing.assert_array_equal(kernel, parity_before[0])
    assert len(qat.outputs) == 2
    others = json.dumps(doc.get("comparisons", [])) + json.dumps(doc.get("agreement", []))
    assert "parity" in others, others[:500]
