"""Per-op mixed precision by PTQ (stages/mixed_ptq.py, `qat plan --ptq`): the ai-edge-quantizer
recipe a plan writes makes exactly the planned precision at each op of a real file, the
rescue raises ops to 16x8 only by measured gains, and the plan runs as aeq_mixed."""

import json
import tomllib

import numpy as np
import pytest

from pipeline.cli.app import main, parse_args
from pipeline.core.errors import ConfigError, ConversionError
from pipeline.core.records import Variant
from pipeline.stages import config, mixed, mixed_ptq, peers, verify
from pipeline.tflite import inspect_report
from pipeline.tflite.tflite_model import TFLiteModel

needs_aeq = pytest.mark.skipif(not peers.available(), reason="ai-edge-quantizer not installed")
F = Variant.FLOAT32


def _by_scope(view: TFLiteModel) -> dict[str, tuple]:
    """scope (output names + ";") -> (opcode, input tensors, output tensors) of each op."""
    sg = view.main
    return {";".join(sg.tensors[i].name for i in op.outputs) + ";":
            (op.opcode, [sg.tensors[i] for i in op.inputs if i >= 0],
             [sg.tensors[i] for i in op.outputs]) for op in sg.operators}


@needs_aeq
def test_the_recipe_makes_each_planned_precision_and_nothing_else(tflite_variants, digits):
    """One op of each choice on the digits model: its INT4 weights (int4), INT16 input and
    output with QUANTIZE ops where it meets int8 (16x8), float output (float); every other op
    int8 in, int8 weights, int8 out."""
    f32 = tflite_variants[F].content
    ops = mixed_ptq.ops_of(f32)
    kinds = [o.cls for o in ops]
    assert kinds.count("CONV_2D") == 3 and "FULLY_CONNECTED" in kinds
    conv = [o for o in ops if o.cls == "CONV_2D"]
    assert all(o.weights > 0 for o in conv) and ops[kinds.index("MAX_POOL_2D")].weights == 0
    plan = {conv[2].name: "int4", conv[1].name: "16x8", ops[kinds.index("MEAN")].name: "float"}
    rep = digits["x_train"][:100]
    content = peers.quantize(f32, rep, Variant.AEQ_MIXED, recipe=mixed_ptq.recipe(plan))
    view = TFLiteModel.from_bytes(content)
    got = _by_scope(view)
    for o in ops:
        opcode, ins, outs = got[o.name]
        assert opcode == o.cls
        choice = plan.get(o.name, "int8")
        act = {"16x8": "INT16", "float": "FLOAT32"}.get(choice, "INT8")
        assert outs[0].dtype == act and ins[0].dtype == act, (o.name, choice)
        if o.weights:
            assert ins[1].dtype == ("INT4" if choice == "int4" else "INT8"), (o.name, choice)
    # the int8 <-> int16 boundary: QUANTIZE ops (requantize), the float op's edges:
    # DEQUANTIZE in, QUANTIZE out
    quant = [v for v in got.values() if v[0] == "QUANTIZE"]
    assert any(v[1][0].dtype == "INT8" and v[2][0].dtype == "INT16" for v in quant)
    assert any(v[1][0].dtype == "INT16" and v[2][0].dtype == "INT8" for v in quant)
    verdict = view.verdict(activations="mixed")
    assert not verdict.full_int8 and any("MEAN" in r or "float" in r for r in verdict.reasons)
    del plan[ops[kinds.index("MEAN")].name]  # without the float op: full-integer, mixed
    again = peers.quantize(f32, rep, Variant.AEQ_MIXED, recipe=mixed_ptq.recipe(plan))
    mixed_view = TFLiteModel.from_bytes(again)
    assert mixed_view.verdict(activations="mixed").full_int8
    assert not mixed_view.verdict().full_int8  # int16 is not int8
    assert mixed_view.activation_precision() == "mixed"  # what `qat inspect` judges it as
    assert "full-integer (int8 / int16): YES" in inspect_report.text(
        inspect_report.build(mixed_view))
    x, y = digits["x_test"], digits["y_test"]
    assert verify.score_tflite("aeq_mixed", again, x, y).accuracy >= 0.8  # it runs
    # a rule for an op this model does not have (another model's plan, an edited regex)
    with pytest.raises(ConversionError, match="1 aeq_mixed recipe rule.s. match no op"):
        peers.quantize(f32, rep, Variant.AEQ_MIXED,
                       recipe=mixed_ptq.recipe({"other_model/conv;": "int4"}))


@needs_aeq
def test_the_rescue_keeps_only_measured_gains(tflite_variants, digits):
    """Against a reference no plan reaches (every validation sample right) the all-int8 plan
    misses a 0 pp budget, so the rescue runs: each op it keeps raised must have raised the
    measured accuracy of the whole plan (the point rule's drop), and the plan reported is the
    file it describes."""
    x, y = digits["x_test"][:200], digits["y_test"][:200]
    rep = digits["x_train"][:100]
    lines = []
    plan = mixed_ptq.search(tflite_variants[F].content, rep, x, y, budget_pp=0.0,
                            float_right=np.ones(len(y), bool), rule="point", log=lines.append)
    raised = [s for s in plan.trail if s["kept"] and (" at 16x8" in s["step"] or
                                                      " at float" in s["step"])]
    accs = [plan.int8_accuracy] + [s["accuracy"] for s in raised]
    assert all(b > a for a, b in zip(accs, accs[1:]))  # each raise gained
    chosen = {l.name: l.choice for l in plan.layers}
    assert sum(c in ("16x8", "float") for c in chosen.values()) == len(raised)
    for l in plan.layers:
        assert (l.float_gain_pp is not None) == (l.choice in ("16x8", "float"))
    # the plan's accuracy is the file it describes, scored again
    choices = {n: c for n, c in chosen.items() if c != "int8"}
    content = peers.quantize(tflite_variants[F].content, rep, Variant.AEQ_MIXED,
                             recipe=mixed_ptq.recipe(choices))
    again = mixed.right(verify.score_tflite("p", content, x, y).outputs, y)
    assert again.mean() == pytest.approx(plan.accuracy, abs=1e-12)  # same file, same data
    assert not plan.fits and lines[0].startswith("plan --ptq: float 100.00 %")


@needs_aeq
def test_plan_ptq_writes_a_recipe_that_runs_as_aeq_mixed(trained_h5, tmp_path, capsys):
    recipe = tmp_path / "plan.toml"
    common = ["--model", str(trained_h5), "--data", "digits", "--output", str(tmp_path / "a"),
              "--quiet"]
    assert main(parse_args(["plan", "--ptq", "--max-accuracy-drop", "1", "--rule", "point",
                            "--recipe-out", str(recipe), *common])) == 0
    assert "at 16x8" in capsys.readouterr().out
    doc = json.loads((tmp_path / "plan.json").read_text())
    cfg = tomllib.loads(recipe.read_text())
    assert recipe.read_text().startswith("# qat plan --ptq: mixed precision within 1 pp")
    assert cfg["convert"]["variants"][-1] == "aeq_mixed"
    assert cfg["convert"]["aeq_recipe"] == doc["aeq_recipe"] == str(tmp_path / "plan.aeq.json")
    rules = peers.load_recipe(doc["aeq_recipe"])
    assert len(rules) == 1 + len(doc["int4"]) + len(doc["16x8"]) + len(doc["float"])
    # the run (no QAT variant here, to keep it short): the file made from that recipe
    code = main(parse_args(["run", "--model", str(trained_h5), "--data", "digits",
                            "--output", str(tmp_path / "run"), "--quiet", "--json",
                            "--set", "convert.variants=float32,aeq_mixed",
                            "--set", f"convert.aeq_recipe={doc['aeq_recipe']}",
                            "--set", "qat.epochs=1"]))
    rep = json.loads(capsys.readouterr().out)["report"]
    assert code == 0
    row = next(v for v in rep["variants"] if v["variant"] == "aeq_mixed")
    (path,) = (tmp_path / "run").glob(f"*/{row['path']}")
    view = TFLiteModel.from_file(path)
    assert (view.size_breakdown().get("int4_weights", 0) > 0) == bool(doc["int4"])
    assert rep["ptq_calibration"]["aeq_mixed"]["recipe"].startswith("per op")
    # `qat convert` applies the same recipe to the model file
    code = main(parse_args(["convert", str(trained_h5), "--data", "digits", "--variants",
                            "float32,aeq_mixed", "--aeq-recipe", doc["aeq_recipe"],
                            "--output", str(tmp_path / "conv")]))
    out = capsys.readouterr().out
    assert code == (1 if doc["float"] else 0) and "aeq_mixed.tflite" in out
    assert (tmp_path / "conv" / "aeq_mixed.tflite").read_bytes() == path.read_bytes()


def test_aeq_mixed_and_its_recipe_go_together(tmp_path):
    with pytest.raises(ConfigError, match="aeq_mixed and convert.aeq_recipe go together"):
        config.ConvertConfig(variants=("float32", "aeq_mixed"))
    with pytest.raises(ConfigError, match="go together"):
        config.ConvertConfig(aeq_recipe="plan.aeq.json")
    bad = tmp_path / "bad.aeq.json"
    bad.write_text('{"regex": 1}')
    with pytest.raises(ConfigError, match="not an ai-edge-quantizer recipe") as err:
        peers.load_recipe(str(bad))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        peers.load_recipe(str(tmp_path / "absent.json"))
