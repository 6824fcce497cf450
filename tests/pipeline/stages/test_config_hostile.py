"""Hostile recipes and overrides: run names that would leave the output root, sections that
are not tables, recipes that are not UTF-8 or not regular files."""

import os

import pytest

from pipeline.stages import config
from pipeline.core.errors import ConfigError


@pytest.mark.parametrize("name, fragment", [
    ("..", "must not start with '.'"),
    ("../victim", "single directory name"),
    ("a/b", "single directory name"),
    ("/etc", "single directory name"),
    ("a\\b", "single directory name"),
    (".hidden", "must not start with '.'"),
    ("a\0b", "single directory name"),
    ("tab\there", "single directory name"),
    ("   ", "is empty"),
    (" padded", "whitespace"),
    ("x" * 201, "too long"),
])
def test_run_names_outside_the_output_root_are_refused(name, fragment):
    with pytest.raises(ConfigError) as exc:
        config.load(None, {"output.name": name})
    msg = str(exc.value)
    assert fragment in msg and "output.name" in msg
    assert "\n" not in msg
    assert "Use one plain directory name" in msg or "at most 200 bytes" in msg


def test_run_name_in_a_recipe_is_checked_too(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[output]\nname = "../../outside"\n')
    with pytest.raises(ConfigError, match=r"output.name must be a single directory name.*"
                       r"'../../outside'"):
        config.load(recipe)


def test_plain_names_are_accepted():
    cfg = config.load(None, {"output.name": "my-model_v2.1"})
    assert cfg.run_dir.name == "my-model_v2.1" and cfg.run_dir.parent.name == "artifacts"


@pytest.mark.parametrize("path, expected", [
    ("/data/.hidden model.h5", "hidden_model"),
    ("/data/../..h5", "model"),
    ("/data/x/..", "model"),
    ("/data/m\u00e9t\u00e9o$(rm -rf).keras", "m_t_o__rm_-rf_"),
    ("/data/saved_model/", "saved_model"),
])
def test_default_run_name_from_a_file_stem_is_sanitized(path, expected):
    cfg = config.load(None, {"model.path": path})
    assert cfg.run_name == expected
    config.check_run_name(cfg.run_name)  # and it passes the rules for explicit names
    assert cfg.run_dir.parent == config.Path("artifacts")


@pytest.mark.parametrize("value, fragment", [("", "output.dir is empty"),
                                             ("out\0dir", "NUL")])
def test_bad_output_dir_values(value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config.load(None, {"output.dir": value})


def test_section_set_to_a_scalar_by_set_is_refused():
    with pytest.raises(ConfigError, match=r"Config section \[qat\] must be a table"):
        config.load("digits_cnn", {"qat": "3"})


@pytest.mark.parametrize("recipe, overrides", [
    ("qat = 3\n", {"qat.epochs": "2"}),
    ('model = "m.h5"\n', {"model.path": "/x.h5"}),
    ("gates = [1, 2]\n", {"gates.min_agreement": "0.5"}),
])
def test_recipe_section_that_is_not_a_table(tmp_path, recipe, overrides):
    path = tmp_path / "r.toml"
    path.write_text(recipe)
    section = next(iter(overrides)).split(".")[0]
    with pytest.raises(ConfigError) as exc:
        config.load(path, overrides)
    assert f"Config section [{section}] must be a table" in str(exc.value)


def test_non_utf8_recipe_names_the_encoding(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("[qat]\n# caf\u00e9\nepochs = 2\n".encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    msg = str(exc.value)
    assert "not UTF-8" in msg and str(path) in msg and "b'\\xe9'" in msg


def test_recipe_that_is_a_character_device():
    with pytest.raises(ConfigError) as exc:
        config.load("/dev/zero")
    assert "is a character device, not a regular file" in str(exc.value)
    assert "does not exist" not in str(exc.value)


def test_recipe_that_is_a_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "r.toml"
    os.mkfifo(fifo)  # nobody writes: opening it for reading would block forever
    with pytest.raises(ConfigError, match="is a named pipe \\(FIFO\\), not a regular file"):
        config.load(fifo)


def test_recipe_that_is_a_directory(tmp_path):
    (tmp_path / "recipe.toml").mkdir()
    with pytest.raises(ConfigError, match="recipe is a directory, not a regular file"):
        config.load(tmp_path / "recipe.toml")


def test_oversized_recipe_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.toml"
    with open(path, "wb") as f:
        f.truncate(2 << 20)  # sparse 2 MiB
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert "larger than the 1 MiB limit for recipe files" in str(exc.value)
    assert "2,097,152 bytes" in str(exc.value)


@pytest.mark.parametrize("nest", ["[", "{a="], ids=["arrays", "inline-tables"])
def test_recipe_nested_too_deeply_is_a_config_error(tmp_path, nest):
    """tomllib parses nested arrays and inline tables recursively: 100k levels is a
    RecursionError, which must surface as a ConfigError (exit 2), not an internal error."""
    path = tmp_path / "deep.toml"
    close = "]" if nest == "[" else "}"
    path.write_text("[qat]\nx = " + nest * 100_000 + "1" + close * 100_000 + "\n")
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert "nests arrays or tables too deeply" in str(exc.value) and str(path) in str(exc.value)
