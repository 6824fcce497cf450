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


def test_plan_then_run_the_recipe(trained_h5, tmp_path, capsys):
    """A trained float model file (no float training in either command); --rule point, so
    that digits' small validation split still lets some layer take 4 bits."""
    recipe = tmp_path / "plan.toml"
    common = ["--model", str(trained_h5), "--data", "digits", "--output", str(tmp_path / "art"),
              "--quiet", "--set", "qat.epochs=1"]
    assert main(parse_args(["plan", "--max-accuracy-drop", "1", "--rule", "point",
                            "--recipe-out", str(recipe), *common])) == 0
    assert "weight bytes saved vs all-int8" in capsys.readouterr().out
    doc = json.loads((tmp_path / "plan.json").read_text())
    cfg = tomllib.loads(recipe.read_text())
    assert recipe.read_text().startswith("# qat plan: mixed precision within 1 pp")
    assert cfg["gates"]["max_accuracy_drop_pp"] == 1.0 and cfg["qat"]["epochs"] == 1
    assert cfg["model"]["path"] == str(trained_h5) and doc["rule"] == "point"
    eight = [l["name"] for l in doc["layers"] if l["choice"] == "int8"]
    assert doc["int4"], "within 1 pp by the measured drop, some digits layer takes 4 bits"
    assert "qat_w4a8" in cfg["convert"]["variants"]
    assert cfg["annotate"]["int8_weights"] == eight
    code = main(parse_args(["run", str(recipe), "--json"]))
    rep = json.loads(capsys.readouterr().out)["report"]
    assert code in (0, 1)  # the budget gate is judged on the test split (1: it failed)
    drop = next(g for g in rep["gates"] if g["name"] == "max_accuracy_drop_pp")
    assert drop["threshold"] == 1.0 and drop["passed"] == (code == 0)
    notes = " ".join(rep["model"]["coverage"]["notes"])
    if eight:
        assert f"8-bit weights kept by annotate.int8_weights: {', '.join(sorted(eight))}" in notes


def test_plan_refuses_a_qat_model(trained_model, digits_npz, tmp_path, capsys):
    from pipeline.stages import annotate
    from pipeline.stages.run import _save_h5
    from pipeline.core import keras_env

    path = tmp_path / "qat.h5"
    qat_model, _ = annotate.apply(trained_model)  # quantize_apply'd (untrained: enough here)
    with keras_env.load().tfmot.quantization.keras.quantize_scope():
        _save_h5(qat_model, path)
    assert main(parse_args(["plan", "--model", str(path), "--data", str(digits_npz),
                            "--max-accuracy-drop", "1",
                            "--recipe-out", str(tmp_path / "p.toml")])) == 2
    assert "The model is already quantization-aware" in capsys.readouterr().err
    assert not (tmp_path / "p.toml").exists()
