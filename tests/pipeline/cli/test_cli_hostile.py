"""Hostile input through the CLI's main(): exit 2 with one line naming the real cause."""

import errno
import os

import numpy as np
import pytest

from pipeline.cli.app import main, parse_args
from tests.pipeline.cli.test_cli import _assert_one_line_error


def _cli(argv, capsys):
    code = main(parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, env):
    """A tiny (untrained) model file and a matching .npz: enough to reach the writing stage."""
    keras = env.keras
    d = tmp_path_factory.mktemp("tiny")
    inp = keras.Input((8, 8, 1))
    m = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.save(d / "tiny.h5")
    rng = np.random.default_rng(0)
    np.savez(d / "tiny.npz", x_train=rng.random((100, 8, 8, 1), dtype=np.float32),
             y_train=np.arange(100) % 10, x_test=rng.random((20, 8, 8, 1), dtype=np.float32),
             y_test=np.arange(20) % 10)
    return str(d / "tiny.h5"), str(d / "tiny.npz")


def test_name_escaping_the_output_root_deletes_nothing(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    out = tmp_path / "out"
    code, _, err = _cli(["run", "digits_cnn", "--output", str(out), "--name", "../victim",
                         "--quiet"], capsys)
    assert code == 2
    _assert_one_line_error(err, "--name must be a single directory name", "'../victim'")
    assert (victim / "precious.txt").read_text() == "keep"
    assert not out.exists()


@pytest.mark.parametrize("name, fragment", [("", "--name is empty"),
                                            (".", "--name must not start with '.'")])
def test_empty_and_dot_names(tmp_path, capsys, name, fragment):
    code, _, err = _cli(["run", "digits_cnn", "--output", str(tmp_path), "--name", name],
                        capsys)
    assert code == 2
    _assert_one_line_error(err, fragment)


def test_run_output_that_is_a_file_fails_before_any_work(tmp_path, capsys):
    f = tmp_path / "out.txt"
    f.write_text("not a dir")
    code, _, err = _cli(["run", "digits_cnn", "--output", str(f), "--quiet"], capsys)
    assert code == 2
    _assert_one_line_error(err, "output directory is a regular file, not a directory",
                           f"output.dir {f}")
    assert "[load]" not in err  # nothing was loaded, let alone trained
    assert f.read_text() == "not a dir"


def test_convert_output_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "out.txt"
    f.write_text("x")
    code, _, err = _cli(["convert", str(tmp_path / "any.h5"), "--data", "digits",
                         "--output", str(f)], capsys)
    assert code == 2  # the output is checked before the (missing) model is even looked at
    _assert_one_line_error(err, "output directory is a regular file", f"--output {f}")


def test_non_utf8_recipe_and_scalar_section(tmp_path, capsys):
    bad = tmp_path / "r.toml"
    bad.write_bytes(b"[qat]\nepochs = 2 # \xff\xfe\n")
    code, _, err = _cli(["run", str(bad)], capsys)
    assert code == 2
    _assert_one_line_error(err, "The recipe is not UTF-8 text", str(bad))
    code, _, err = _cli(["run", "digits_cnn", "--set", "qat=3"], capsys)
    assert code == 2
    _assert_one_line_error(err, "Config section [qat] must be a table")


def test_data_that_is_a_device(tmp_path, tiny, capsys):
    code, _, err = _cli(["run", "--model", tiny[0], "--data", "/dev/zero", "--output",
                         str(tmp_path), "--quiet"], capsys)
    assert code == 2
    _assert_one_line_error(err, "data file is a character device, not a regular file")


def test_non_json_h5_config_exits_2(tmp_path, tiny, capsys):
    import h5py

    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = "{'class_name': 'Sequential'}"  # Python repr, not JSON
    code, _, err = _cli(["run", "--model", str(path), "--data", tiny[1], "--output",
                         str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 2
    _assert_one_line_error(err, "config (model_config) is not valid JSON", str(path))


def test_full_disk_while_writing_artifacts_exits_2(tmp_path, tiny, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "o"
    code, _, err = _cli(["run", "--model", tiny[0], "--data", tiny[1], "--output", str(out),
                         "--quiet", "--epochs", "1"], capsys)
    assert code == 2, err
    _assert_one_line_error(err, "Cannot write the artifacts: the disk is full",
                           "No space left on device", "config.toml")
    assert "internal error" not in err
    assert list(out.iterdir()) == []  # staging removed, lock released


def test_resume_with_another_config_exits_2(tmp_path, tiny, capsys):
    from pipeline.stages import config
    from pipeline.core.artifacts import RunDir

    out = tmp_path / "o"
    earlier = config.load(None, {"model.path": tiny[0], "data.path": tiny[1],
                                 "output.dir": str(out), "qat.learning_rate": "1e-4"})
    first = RunDir(earlier.run_dir, log=lambda *_: None)
    first.write_text("config.toml", earlier.to_toml())
    first.write_json("checkpoints/state.json", {"epochs_done": 1})
    first.abort(keep=True)  # as if killed after its first epoch

    code, _, err = _cli(["run", "--model", tiny[0], "--data", tiny[1], "--output", str(out),
                         "--quiet", "--resume"], capsys)
    assert code == 2, err
    _assert_one_line_error(err, "--resume must continue the same run",
                           "qat.learning_rate: 0.0001 -> 3e-05")
    assert (out / ".tiny.partial" / "checkpoints" / "state.json").is_file()  # kept

    other = tmp_path / "other.h5"
    other.write_bytes(open(tiny[0], "rb").read())
    code, _, err = _cli(["run", "--model", str(other), "--data", tiny[1], "--output",
                         str(out), "--name", "tiny", "--quiet", "--resume",
                         "--set", "qat.learning_rate=1e-4"], capsys)
    assert code == 2
    _assert_one_line_error(err, "--resume must continue the same run", "model.path")
