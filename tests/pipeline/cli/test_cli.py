"""CLI contract: bad input -> one-line error, exit 2, nothing written; --help everywhere."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.cli.app import main, parse_args
from tests.conftest import REPO, run_cli


def _cli(argv, capsys):
    code = main(parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str, *fragments: str):
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def _assert_nothing_written(out_dir):
    leftovers = [p for p in out_dir.rglob("*")] if out_dir.exists() else []
    assert not leftovers, leftovers


def _npz(path, digits, **changes):
    arrays = {k: v for k, v in digits.items() if k != "preprocessing"}
    arrays.update(changes)
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case, fragments", [
    ("wrong_shape", ["Input data has shape (N, 8, 8) but the model expects (N, 8, 8, 1)",
                     "x[..., None]"]),
    ("nan", ["NaN or infinite", "first in sample 5"]),
    ("labels", ["Labels go up to 12 but the model has 10 outputs"]),
    ("empty", ["The test split is empty"]),
    ("missing_data", ["data file does not exist"]),
    ("missing_model", ["model file does not exist"]),
    ("dir_model", ["not a SavedModel"]),
    ("config_key", ["Unknown config key", "Did you mean 'qat.epochs'?"]),
    ("lambda", ["Lambda layer(s)", "--trust-model"]),
])
def test_bad_input(case, fragments, tmp_path, digits, trained_h5, env, capsys):
    out_dir = tmp_path / "out"
    model, data = str(trained_h5), str(tmp_path / "d.npz")
    extra = []
    if case == "wrong_shape":
        _npz(data, digits, x_train=digits["x_train"][..., 0], x_test=digits["x_test"][..., 0])
    elif case == "nan":
        x = digits["x_train"].copy()
        x[5, 1, 1, 0] = np.nan
        _npz(data, digits, x_train=x)
    elif case == "labels":
        y = digits["y_test"].copy()
        y[3] = 12
        _npz(data, digits, y_test=y)
    elif case == "empty":
        _npz(data, digits, x_test=digits["x_test"][:0], y_test=digits["y_test"][:0])
    elif case == "missing_data":
        data = str(tmp_path / "nope.npz")
    else:
        _npz(data, digits)
    if case == "missing_model":
        model = str(tmp_path / "nope.h5")
    elif case == "dir_model":
        (tmp_path / "notamodel").mkdir()
        (tmp_path / "notamodel" / "readme.txt").write_text("hi")
        model = str(tmp_path / "notamodel")
    elif case == "config_key":
        extra = ["--set", "qat.epoch=3"]
    elif case == "lambda":
        keras = env.keras
        inp = keras.Input((8, 8, 1))
        h = keras.layers.Lambda(lambda x: x + 1.0)(inp)
        m = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(h)))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.save(tmp_path / "lambda.h5")
        model = str(tmp_path / "lambda.h5")
    code, out, err = _cli(["run", "--model", model, "--data", data, "--output", str(out_dir),
                           "--quiet", *extra], capsys)
    assert code == 2
    _assert_one_line_error(err, *fragments)
    _assert_nothing_written(out_dir)


@pytest.mark.slow
def test_console_exit_codes_and_no_traceback(tmp_path):
    r = run_cli("run", "--model", str(tmp_path / "missing.h5"), "--data", "digits",
                "--output", str(tmp_path / "o"))
    assert r.returncode == 2
    line = _assert_one_line_error(r.stderr, "model file does not exist", "Check the path")
    assert str(tmp_path / "missing.h5") in line
    r = run_cli("run", "--model", str(tmp_path / "missing.h5"), "--data", "digits", "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr
    r = run_cli("verify")  # argparse usage error
    assert r.returncode == 2 and "required" in r.stderr


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["convert", "--help"],
                                  ["verify", "--help"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 0
    assert "usage: qat" in capsys.readouterr().out


def test_help_does_not_import_tensorflow():
    code = ("import sys, contextlib, io, pipeline.cli.app as c\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        c.parse_args(['run', '--help'])\n    except SystemExit: pass\n"
            "assert 'tensorflow' not in sys.modules\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO)
    assert out.stdout.strip() == "ok", out.stderr


def test_convert_and_verify_commands(tmp_path, trained_h5, digits_npz, capsys):
    out_dir = tmp_path / "conv"
    code, out, err = _cli(["convert", str(trained_h5), "--data", str(digits_npz),
                           "--output", str(out_dir), "--representative-samples", "50",
                           "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert [o["variant"] for o in doc["outputs"]] == ["float32", "ptq_int8"]
    assert doc["outputs"][1]["verdict"]["full_int8"] is True
    assert sorted(p.name for p in out_dir.iterdir()) == ["float32.tflite", "ptq_int8.tflite"]

    code, out, err = _cli(["convert", str(trained_h5), "--data", str(digits_npz),
                           "--variants", "qat_int8", "--output", str(out_dir)], capsys)
    assert code == 2
    _assert_one_line_error(err, "qat_int8 needs a QAT model")

    # verify runs in a child process on the real console entry, stdout = JSON only
    r = run_cli("verify", str(out_dir / "ptq_int8.tflite"), "--data", str(digits_npz),
                "--json", "--min-accuracy", "0.85", "--require-full-int8")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["full_int8"] is True and result["samples"] == 450
    assert result["accuracy"] >= 0.85
    assert result["input"]["dtype"] == "INT8"
    r = run_cli("verify", str(out_dir / "float32.tflite"), "--data", str(digits_npz),
                "--require-full-int8")
    assert r.returncode == 1 and "not full-int8" in r.stdout
