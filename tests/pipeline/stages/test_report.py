"""report.build on typed stage results: report.json's keys and values, report.md's sections,
and the files written. A tiny real tf_keras model, converted and scored for real; the records
the later stages would produce (fit, layer parity rows) are constructed."""

import json
from dataclasses import replace

import numpy as np
import pytest

from pipeline.core.artifacts import RunDir, dumps_json
from pipeline.core.records import SCHEMA_VERSION, Variant, VariantResult
from pipeline.stages import annotate, convert, gates, report, stats, verify
from pipeline.stages import config as config_mod
from pipeline.stages import run as run_mod
from pipeline.stages.config import Config
from pipeline.stages.data import Dataset
from pipeline.stages.finetune import FitResult
from pipeline.stages.modelio import LoadedModel
from pipeline.stages.parity import LayerParity, LayerRow
from pipeline.stages.results import (Conversions, FloatStage, Inputs, QatStage, Splits,
                                     Verified)
from pipeline.tflite import islands
from pipeline.tflite.runtime import ModelRunner
from pipeline.tflite.tflite_model import TFLiteModel

# report.json's top-level keys, in order: what the run writes (checked against a run with
# the code before report.build, whose report.json was identical but for stage times)
HEAD = ["schema_version", "name", "status", "seed", "config_sha256", "model", "data",
        "float_training", "data_card"]
TAIL = ["gates", "timings", "machine"]
INTERVALS = ["accuracy_ci95", "qat_vs_best_ptq", "ptq_calibration"]
FULL_KEYS = HEAD + ["qat", "keras", "variants", "agreement", "comparisons", "layer_parity",
                    "float_islands", "model_card"] + INTERVALS + TAIL
STOPPED_KEYS = HEAD + ["keras", "variants", "agreement"] + INTERVALS + TAIL
TIMINGS = {"load": 1.25, "train_float": 2.0, "convert": 3.04, "total": 7.5}


@pytest.fixture(scope="module")
def stages(env):
    """Inputs and FloatStage of a tiny 3-class model on seeded random 8x8 images."""
    keras, L = env.keras, env.keras.layers
    env.tf.random.set_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    h = L.ReLU(name="relu")(L.Conv2D(4, 3, name="conv")(inp))
    model = keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="gap")(h)),
                        name="tiny")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (60, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    ds = Dataset("tiny", "test:tiny", x[:40], y[:40], x[40:], y[40:], {"transform": "x"})
    _, plan = annotate.prepare(model)
    inputs = Inputs(env, LoadedModel(model, "python:tiny", "python", False), ds,
                    Splits(x[:30], y[:30], x[30:40], y[30:40]), True, plan)
    floats = FloatStage(model, {"epochs": 3, "best_val_accuracy": 0.5},
                        verify.score_keras("keras_float", model, ds.x_test, ds.y_test))
    return inputs, floats


@pytest.fixture(scope="module")
def later(stages):
    """The results after the float gate: float32 and a ptq_int8 with a float island."""
    inputs, floats = stages
    ds = inputs.dataset
    f32 = convert.convert(Variant.FLOAT32, floats.model)
    ptq = convert.convert(Variant.PTQ_INT8, floats.model, representative=ds.x_train)
    content, rep = islands.keep_float(ptq.content, ["conv", "relu"])
    verdict = TFLiteModel.from_bytes(content).verdict()
    assert not verdict.full_int8 and islands.only_islands(verdict, rep)
    ptq = replace(ptq, content=content, verdict=verdict, islands=rep, islands_only=True)
    conv = Conversions({Variant.FLOAT32: f32, Variant.PTQ_INT8: ptq}, calibration_samples=40)
    scored = {v: verify.score_tflite(v.value, c.content, ds.x_test, ds.y_test)
              for v, c in conv.by_variant.items()}
    agreement = {v: verify.compare(floats.score, s) for v, s in scored.items()}
    variants = {v: VariantResult(v.value, v.filename, c.size, scored[v].accuracy, len(ds.y_test),
                                 None if c.verdict is None else c.verdict.full_int8,
                                 () if c.verdict is None else c.verdict.reasons)
                for v, c in conv.by_variant.items()}
    keras_qat = replace(floats.score, name="keras_qat")
    verified = Verified(keras_qat, scored, variants, agreement,
                        [verify.compare(floats.score, keras_qat)])
    qat = QatStage(floats.model, inputs.plan,
                   FitResult(2, 1, 2, 0.25, True, {"loss": [0.5, 0.25]}),
                   {"ranges": 4, "samples": 30})
    lp = LayerParity([LayerRow("conv", "compared", "tiny/conv/Conv2D", shape=(1, 6, 6, 4),
                               scale=0.01, mean_error_lsb=0.125, max_error_lsb=1.0,
                               sqnr_db=40.0),
                      LayerRow("relu", "fused", fused_into="conv")], 1.0, 20)
    return dict(qat=qat, conv=conv, verified=verified, parity=lp,
                card=report.deliverable_card("tiny", inputs, floats, conv))


def _gates(floats, later=None):
    g = Config().gates
    if later is None:
        return gates.float_gate(replace(g, min_float_accuracy=0.99), floats.accuracy)
    v = later["verified"]
    return gates.evaluate(g, floats.accuracy, v.variants, v.agreement,
                          later["conv"].islands_only)


def test_full_report_json(stages, later):
    inputs, floats = stages
    results = _gates(floats, later)
    doc = report.build(Config(), inputs, floats, results, TIMINGS, **later).to_dict()
    assert list(doc) == FULL_KEYS
    assert doc["schema_version"] == SCHEMA_VERSION and doc["name"] == "digits_cnn"
    assert doc["status"] == ("passed" if all(g.passed for g in results) else "gates_failed")
    assert doc["model"] == {"source": "python:tiny", "kind": "python",
                            "input_shape": [8, 8, 1], "outputs": 3, "from_logits": True,
                            "coverage": inputs.plan.to_dict(), "keras3_translation": None}
    assert doc["qat"] == {"epochs_run": 2, "resumed_from_epoch": 1, "best_epoch": 2,
                          "best_value": 0.25, "stopped_early": True,
                          "history": {"loss": [0.5, 0.25]},
                          "range_init": {"ranges": 4, "samples": 30}}
    assert doc["keras"] == {"float_accuracy": floats.accuracy,
                            "qat_accuracy": floats.accuracy}
    v = later["verified"]
    assert doc["variants"] == [r.to_dict() for r in v.variants.values()]
    assert [a["candidate"] for a in doc["agreement"]] == ["float32", "ptq_int8"]
    assert doc["comparisons"] == [v.comparisons[0].to_dict()]
    assert doc["layer_parity"] == later["parity"].to_dict()
    assert doc["float_islands"] == {"ptq_int8": later["conv"].islands["ptq_int8"].to_dict()}
    assert doc["float_islands"]["ptq_int8"]["layers"] == ["conv", "relu"]
    assert doc["model_card"]["file"] == "float32.tflite"  # no qat_int8: the first variant
    assert doc["gates"] == [g.to_dict() for g in results] and doc["timings"] == TIMINGS
    json.loads(dumps_json(doc))  # strict JSON as written


def test_full_report_markdown_sections(stages, later):
    inputs, floats = stages
    md = report.build(Config(), inputs, floats, _gates(floats, later), TIMINGS,
                      **later).markdown()
    heads = [line for line in md.splitlines() if line.startswith("## ")]
    assert heads == ["## Variants", "## Accuracy with 95 % intervals", "## Output differences",
                     "## Layer parity: Keras QAT vs qat_int8.tflite", "## Quality gates",
                     "## Float islands (annotate.keep_float)", "## Full-int8 findings",
                     "## Feeding the model on the phone", "## Training", "## QAT coverage",
                     "## Stage times"]
    size = later["conv"].by_variant[Variant.PTQ_INT8].size
    assert f"| `ptq_int8.tflite` | {size:,} |" in md and "| **no** |" in md
    assert "| Keras QAT | — | — |" in md and "| keras_float | keras_qat | 100.00 % |" in md
    assert later["parity"].markdown() in md and inputs.plan.markdown() in md
    assert "- `ptq_int8`: layers conv, relu run in float32" in md
    reasons = later["verified"].variants[Variant.PTQ_INT8].full_int8_reasons
    assert reasons and f"- `ptq_int8`: {'; '.join(reasons)}" in md
    assert "- float baseline trained 3 epochs (best val accuracy 50.00 %)" in md
    assert ("- QAT: 2 epoch(s) this run, resumed from epoch 1, best epoch 2, stopped early: "
            "True") in md
    assert "- activation ranges initialised from 30 training samples (4 range variables" in md
    assert "| full_int8[ptq_int8] | int8 + requested float islands | True | pass |" in md
    assert md.endswith("| load | 1.2 |\n| train_float | 2.0 |\n| convert | 3.0 |\n"
                       "| total | 7.5 |\n")


def test_report_of_a_run_stopped_at_the_float_gate(stages, tmp_path):
    inputs, floats = stages
    (gate,) = _gates(floats)
    assert not gate.passed
    rep = report.build(Config(), inputs, floats, [gate], TIMINGS)
    doc = rep.to_dict()
    assert list(doc) == STOPPED_KEYS and doc["status"] == "gates_failed"
    assert doc["model"]["coverage"] is None and doc["variants"] == [] == doc["agreement"]
    assert doc["keras"] == {"float_accuracy": floats.accuracy, "qat_accuracy": None}
    md = rep.markdown()
    assert "**Status: FAILED**" in md and "**FAIL** the float model itself is below" in md
    for absent in ("| Keras QAT |", "## Layer parity", "## QAT coverage", "## Feeding", "- QAT:"):
        assert absent not in md
    run_dir = RunDir(tmp_path / "run", log=lambda *_: None)
    written = report.write(run_dir, rep)
    assert written == doc and json.loads(run_dir.path("report.json").read_text()) == \
        json.loads(dumps_json(doc))
    assert run_dir.path("report.md").read_text() == md
    assert not run_dir.path("model_card.json").exists()
    run_dir.abort(keep=False)


def test_model_card_says_how_to_feed_and_read_int8(stages, later):
    inputs, floats = stages
    ptq = later["conv"].by_variant[Variant.PTQ_INT8]
    io = ModelRunner(ptq.content, batch_size=1).describe()
    card = report.model_card("tiny", "ptq_int8", io, {"transform": "x"}, 3)
    inp, out = io["inputs"][0], io["outputs"][0]
    assert card["file"] == "ptq_int8.tflite" and card["classes"] == 3
    assert card["feed"].startswith(f"q = clip(round(x / {inp['scale']!r})")
    assert card["read"].startswith(f"y = {out['scale']!r} * (q")
    assert "feed" not in later["card"] and "read" not in later["card"]  # float32 I/O


def test_intervals_in_report_json_and_markdown(stages, later):
    inputs, floats = stages
    rep = report.build(Config(), inputs, floats, _gates(floats, later), TIMINGS, **later)
    doc = rep.to_dict()
    rows = {r["model"]: r for r in doc["accuracy_ci95"]["rows"]}
    assert doc["accuracy_ci95"]["interval"] == "Wilson score, 95 %"
    assert list(rows) == ["keras_float", "keras_qat", "float32", "ptq_int8"]
    n = len(inputs.dataset.y_test)
    for name, r in rows.items():
        assert r["samples"] == n and r["accuracy"] == pytest.approx(r["correct"] / n)
        assert r["ci95"] == list(stats.wilson(r["correct"], n))
        assert r["delta_vs_float_pp"] == pytest.approx(100 * (r["accuracy"] - floats.accuracy))
    v = later["verified"]
    assert rows["ptq_int8"]["accuracy"] == v.variants[Variant.PTQ_INT8].accuracy
    assert rows["ptq_int8"]["size_bytes"] == v.variants[Variant.PTQ_INT8].size_bytes
    assert rows["ptq_int8"]["agreement"] == v.agreement[Variant.PTQ_INT8].top1_agreement
    assert rows["ptq_int8"]["io"] == "int8" and rows["float32"]["io"] == "float32"
    assert doc["qat_vs_best_ptq"] is None  # no qat_int8 in this run
    assert doc["ptq_calibration"]["samples"] == 40
    assert doc["ptq_calibration"]["variants"] == ["ptq_int8"]
    assert doc["data_card"] is None
    md = rep.markdown()
    assert "PTQ calibration: ptq_int8 on the same 40 training samples." in md
    lo, hi = rows["ptq_int8"]["ci95"]
    assert f"| ptq_int8 | {rows['ptq_int8']['correct']} / {n} |" in md
    assert f"{100 * lo:.2f} % – {100 * hi:.2f} %" in md
    stopped = report.build(Config(), inputs, floats, _gates(floats), TIMINGS).to_dict()
    assert [r["model"] for r in stopped["accuracy_ci95"]["rows"]] == ["keras_float"]
    assert stopped["qat_vs_best_ptq"] is None and stopped["ptq_calibration"] is None


def test_a_dataset_card_is_written_and_referenced(stages, tmp_path):
    """A generated zoo dataset's card lands in the run directory as data_card.json (here a
    run stopped at the float gate: the card is written before training)."""
    inputs, floats = stages
    card = {"source": "generated for this test", "classes": ["a", "b", "c"],
            "licence": "CC0-1.0"}
    ds = replace(inputs.dataset, card=card)
    cfg = config_mod.load(None, {"output.dir": str(tmp_path), "output.name": "carded",
                                 "gates.min_float_accuracy": "1.0", "qat.verbose": "0"})
    result = run_mod.run(cfg, log=lambda *_: None, model=floats.model, dataset=ds)
    run_dir = tmp_path / "carded"
    assert result.exit_code == 1  # stopped at the float gate, after writing the card
    assert json.loads((run_dir / "data_card.json").read_text()) == card
    assert json.loads((run_dir / "report.json").read_text())["data_card"] == "data_card.json"
    assert "Data set card: [`data_card.json`](data_card.json)" in \
        (run_dir / "report.md").read_text()
    assert "data_card.json" in json.loads((run_dir / "manifest.json").read_text())["files"]


def test_a_peer_that_fails_is_noted_unless_it_was_asked_for(stages, tmp_path, monkeypatch):
    """ai-edge-quantizer refusing a model (made to here) skips an auto-added aeq_int8 with a
    note in the log and the report; listed in convert.variants, it fails the run."""
    from pipeline.core.errors import ConversionError
    from pipeline.stages import peers

    def refuse(*_, **__):
        raise ConversionError("ai-edge-quantizer failed to quantize the float32 model", "op X")

    monkeypatch.setattr(peers, "quantize", refuse)
    inputs, floats = stages
    qat = QatStage(floats.model, inputs.plan, FitResult(1, 0, 1, 0.0, False, {}), None)
    F, P, A = Variant.FLOAT32, Variant.PTQ_INT8, Variant.AEQ_INT8
    for asked, name in (((F, P), "auto"), ((F, P, A), "asked")):
        cfg = config_mod.load(None, {"convert.variants": ",".join(v.value for v in asked),
                                     "convert.representative_samples": "10"})
        logs = []
        ctx = run_mod._Run(cfg, RunDir(tmp_path / name, log=lambda *_: None),
                           run_mod._Timer(logs.append), logs.append, False, 0.0, (F, P, A))
        if name == "asked":
            with pytest.raises(ConversionError):
                run_mod.convert_variants(ctx, inputs, floats, qat)
            ctx.run_dir.abort(keep=False)
            continue
        conv = run_mod.convert_variants(ctx, inputs, floats, qat)
        assert list(conv.by_variant) == [F, P] and list(conv.failed_peers) == ["aeq_int8"]
        assert any("aeq_int8.tflite skipped" in line for line in logs)
        rep = report.build(cfg, inputs, floats, [], TIMINGS, conv=conv)
        assert rep.to_dict()["ptq_calibration"]["failed_peers"]["aeq_int8"].startswith(
            "ai-edge-quantizer failed")
        ctx.run_dir.abort(keep=False)
