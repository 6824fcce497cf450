import dataclasses
import tomllib

import pytest

from pipeline.stages import config
from pipeline.core.errors import ConfigError


def test_bundled_recipe_loads_by_name_and_path():
    by_name = config.load("digits_cnn")
    by_path = config.load("models/digits_cnn.toml")
    assert by_name == by_path
    assert by_name.model.name == "digits_cnn"
    assert by_name.data.name == "digits"
    assert by_name.convert.variants == ("float32", "ptq_int8", "qat_int8")
    assert by_name.run_dir.as_posix() == "artifacts/digits_cnn"


def test_round_trip_through_toml():
    cfg = config.load("digits_cnn", {"qat.epochs": "3", "convert.io": "float", "seed": "7"})
    again = config.from_dict(tomllib.loads(cfg.to_toml()))
    assert again == cfg
    assert again.hash() == cfg.hash()
    assert cfg.qat.epochs == 3 and cfg.seed == 7 and cfg.convert.io == "float"


def test_hash_follows_what_decides_the_results_only():
    """Where a run is written and how chatty it is do not change its hash; any other key
    does (two `make demo`s in other folders report the same config_sha256)."""
    base = config.load("digits_cnn")
    same = config.load("digits_cnn", {"output.dir": "/tmp/elsewhere", "output.name": "x",
                                      "qat.verbose": "0"})
    assert same.hash() == base.hash()
    for key, value in [("qat.epochs", "3"), ("seed", "1"), ("convert.io", "float"),
                       ("gates.min_agreement", "0.5")]:
        assert config.load("digits_cnn", {key: value}).hash() != base.hash(), key


@pytest.mark.parametrize("raw, key, hint", [
    ({"qat": {"epocs": 3}}, "qat.epocs", "Did you mean 'qat.epochs'?"),
    ({"gate": {}}, "gate", "Did you mean 'gates'?"),
    ({"convert": {"representative_sample": 5}}, "convert.representative_sample",
     "Did you mean 'convert.representative_samples'?"),
])
def test_unknown_keys_suggest(raw, key, hint):
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw, "recipe.toml")
    msg = str(err.value)
    assert f"Received: {key}." in msg and hint in msg
    assert err.value.exit_code == 2


@pytest.mark.parametrize("overrides, fragment", [
    ({"qat.epochs": "zero"}, "qat.epochs expects int"),
    ({"qat.epochs": "0"}, "qat.epochs must be at least 1"),
    ({"qat.learning_rate": "3"}, "qat.learning_rate must be in (0, 1)"),
    ({"convert.variants": "float32,int4"}, "Unknown variant"),
    ({"gates.min_agreement": "1.5"}, "gates.min_agreement must be in [0, 1]"),
    ({"data.validation_split": "0.9"}, "data.validation_split"),
    ({"qat.monitor": "accuracy"}, "Unknown qat.monitor"),
    ({"nosection.key": "1"}, "Unknown config key"),
])
def test_invalid_values_are_rejected(overrides, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        config.load("digits_cnn", overrides)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_model_path_override_replaces_zoo_name(tmp_path):
    cfg = config.load("digits_cnn", {"model.path": str(tmp_path / "m.h5")})
    assert cfg.model.name == "" and cfg.model.path.endswith("m.h5")
    assert cfg.run_name == "m"


def test_recipe_relative_paths_resolve_next_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "r.toml"
    recipe.write_text('[model]\npath = "model.h5"\n[data]\npath = "../d.npz"\n')
    cfg = config.load(recipe)
    assert cfg.model.path == str((tmp_path / "sub" / "model.h5").resolve())
    assert cfg.data.path == str((tmp_path / "d.npz").resolve())


def test_invalid_toml_and_missing_recipe(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[qat\nepochs = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="Recipe not found"):
        config.load(tmp_path / "nope.toml")


def test_configs_are_frozen():
    cfg = config.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
