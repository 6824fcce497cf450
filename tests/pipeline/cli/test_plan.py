"""`qat plan`: the recipe it writes is the run's recipe with the measured plan in it, and
`qat run` takes it back."""

import json
import tomllib

from pipeline.cli.app import main, parse_args


def test_plan_refuses_a_bad_budget_or_recipe_path(tmp_path, capsys):
    assert main(parse_args(["plan", "digits_cnn", "--max-accuracy-drop", "-1"])) == 2
    assert "--max-accuracy-drop is in percentage points" in capsys.readouterr().err
    assert main(parse_args(["plan", "digits_cnn", "--max-accuracy-drop", "0.5",
                            "--recipe-out", str(tmp_path / "plan.txt")])) == 2
    assert "--recipe-out must name a .toml file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written, nothing trained


def test_plan_then_run_the_recipe(tmp_path, capsys):
    recipe = tmp_path / "plan.toml"
    common = ["--output", str(tmp_path / "art"), "--quiet", "--set", "model.float_epochs=20",
              "--set", "qat.epochs=1"]
    assert main(parse_args(["plan", "digits_cnn", "--max-accuracy-drop", "1",
                            "--recipe-out", str(recipe), *common])) == 0
    assert "weight bytes saved vs all-int8" in capsys.readouterr().out
    doc = json.loads((tmp_path / "plan.json").read_text())
    cfg = tomllib.loads(recipe.read_text())
    assert recipe.read_text().startswith("# qat plan: mixed precision within 1 pp")
    assert cfg["gates"]["max_accuracy_drop_pp"] == 1.0 and cfg["model"]["float_epochs"] == 20
    eight = [l["name"] for l in doc["layers"] if l["choice"] == "int8"]
    if doc["int4"]:
        assert "qat_w4a8" in cfg["convert"]["variants"]
        assert cfg["annotate"]["int8_weights"] == eight
    code = main(parse_args(["run", str(recipe), "--json"]))
    rep = json.loads(capsys.readouterr().out)["report"]
    assert code in (0, 1)  # the budget gate is judged on the test split (1: it failed)
    drop = next(g for g in rep["gates"] if g["name"] == "max_accuracy_drop_pp")
    assert drop["threshold"] == 1.0 and drop["passed"] == (code == 0)
    notes = " ".join(rep["model"]["coverage"]["notes"])
    if doc["int4"] and eight:
        assert f"8-bit weights kept by annotate.int8_weights: {', '.join(sorted(eight))}" in notes


def test_plan_refuses_a_qat_model(qat_model, digits_npz, tmp_path, capsys):
    from pipeline.stages.run import _save_h5
    from pipeline.core import keras_env

    path = tmp_path / "qat.h5"
    with keras_env.load().tfmot.quantization.keras.quantize_scope():
        _save_h5(qat_model, path)
    assert main(parse_args(["plan", "--model", str(path), "--data", str(digits_npz),
                            "--max-accuracy-drop", "1",
                            "--recipe-out", str(tmp_path / "p.toml")])) == 2
    assert "The model is already quantization-aware" in capsys.readouterr().err
    assert not (tmp_path / "p.toml").exists()
