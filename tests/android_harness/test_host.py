"""``android-harness host``: the same protocol on this machine, with the real LiteRT interpreter.

Timing figures (CV, agreement with LiteRT's own benchmark script) live in
benchmarks/harness_host_bench.py; these tests check what was measured and recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from android_harness.inputs import load_inputs
from pipeline.tflite.runtime import ModelRunner

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", [[], ["--contiguous"]], ids=["interleaved", "contiguous"])
def test_host_run_records_every_invoke(tiny_models, run_cli, fast, tmp_path, mode):
    out = tmp_path / "out"
    code, stdout, err = run_cli("host", tiny_models["float32"], tiny_models["qat_int8"],
                                "--threads", "1,2", "--delegate", "xnnpack,cpu", "--repeats", "2",
                                "--min-runs", "30", "--out", out, *fast, *mode)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema_version"] == 1 and doc["command"] == "host"
    t = doc["targets"][0]
    assert t["kind"] == "host" and t["tool"]["runtime"] == "litert" and t["tool"]["version"]
    assert t["conditions_start"]["cores"] == os.cpu_count()
    assert len(doc["results"]) == 8
    for r in doc["results"]:
        assert r["status"] == "ok" and r["median_source"] == "per-invoke latencies"
        lat = np.concatenate([m["latencies_us"] for m in r["repeat_measurements"]])
        assert r["invokes"] == lat.size >= 60
        assert r["p50_us"] == pytest.approx(np.median(lat))
        assert r["p99_us"] == pytest.approx(np.percentile(lat, 99))
        assert r["min_us"] <= r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"]
        assert r["ci95_median_us"]["low"] <= r["p50_us"] <= r["ci95_median_us"]["high"]
        assert r["init_us"] > 0 and r["first_inference_us"] > 0
        assert r["repeat_medians_us"] == [pytest.approx(np.median(m["latencies_us"]), rel=1e-6)
                                          for m in r["repeat_measurements"]]
        for m in r["repeat_measurements"]:
            assert m["count"] >= 30 and m["warmup_count"] >= 10
    for cfg in ("t1/xnnpack", "t2/cpu"):
        f32, i8 = (next(r for r in doc["results"] if r["model"] == m and r["config_key"] == cfg)
                   for m in ("float32", "qat_int8"))
        assert f32["ratio_to_baseline"] == 1.0
        assert i8["ratio_to_baseline"] == pytest.approx(i8["p50_us"] / f32["p50_us"])
    assert "| host | qat_int8 | t1/xnnpack | 2/2 |" in stdout
    assert doc["protocol"]["interleave"] == (mode == [])


def test_interleaved_repeats_each_get_their_seconds(tiny_models, run_cli, fast, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("host", tiny_models["float32"], tiny_models["qat_int8"], "--repeats",
                           "3", "--out", out, *fast, "--min-seconds", "0.1", "--slice-ms", "5")
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    ms = [m for r in doc["results"] for m in r["repeat_measurements"]]
    assert len(ms) == 6 and len({m["wall_s"] for m in ms}) == 1  # measured together
    for m in ms:
        # at least --min-seconds of timed invokes (count and mean cover every invoke; the
        # stored series may be subsampled)
        assert m["count"] * m["mean_us"] >= 0.1e6 * (1 - 1e-9)
        assert m["memory"]["init_mb"] is not None and m["first_us"] > 0


def test_host_real_inputs_are_quantized_per_model(tiny_models, inputs_npz):
    x = np.load(inputs_npz)["x_test"]
    (f32,) = load_inputs(str(inputs_npz), tiny_models["float32"])
    (i8,) = load_inputs(f"{inputs_npz}:x_test", tiny_models["qat_int8"])
    assert f32.samples.dtype == np.float32 and np.array_equal(f32.samples, x)
    spec = ModelRunner(tiny_models["qat_int8"]).inputs[0]
    assert i8.samples.dtype == np.int8
    assert np.array_equal(i8.samples, spec.quant.quantize(x))
    assert f32.count == len(x) and f32.batch(3).shape == (1, 8, 8, 1)


def test_host_run_with_real_inputs(tiny_models, inputs_npz, run_cli, fast, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("host", tiny_models["qat_int8"], "--inputs", inputs_npz,
                           "--repeats", "1", "--out", out, *fast)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["results"][0]["status"] == "ok"


@pytest.mark.parametrize("spec, words", [
    ("missing.npz", "does not exist"),
    ("{npz}:y_wrong", "key is not in the .npz"),
])
def test_bad_inputs_are_usage_errors(tiny_models, inputs_npz, run_cli, fast, spec, words):
    code, _, err = run_cli("host", tiny_models["float32"], "--inputs",
                           spec.format(npz=inputs_npz), *fast)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_wrong_input_shape_is_explained(tiny_models, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_test=np.zeros((4, 28, 28), np.float32))
    from android_harness.errors import InputDataError

    with pytest.raises(InputDataError, match=r"shape \(4, 28, 28\) but the model expects "
                                             r"\(N, 8, 8, 1\)"):
        load_inputs(str(bad), tiny_models["float32"])


@pytest.mark.parametrize("argv, words", [
    (["--delegate", "gpu"], "runs on this CPU only"),
    (["--threads", "0"], "at least 1"),
    (["--repeats", "0"], "repeats is out of range"),
    (["--core-mask", "zz"], "non-zero hex"),
])
def test_host_usage_errors(tiny_models, run_cli, fast, argv, words):
    code, _, err = run_cli("host", tiny_models["float32"], *argv, *fast)
    assert code == 2 and words in err and "Traceback" not in err


def test_core_mask_pins_the_host_run(tiny_models, run_cli, fast, tmp_path):
    before = os.sched_getaffinity(0)
    code, _, err = run_cli("host", tiny_models["float32"], "--core-mask", "1", "--repeats", "1",
                           "--out", tmp_path / "o", *fast)
    assert code == 0, err
    assert os.sched_getaffinity(0) == before  # restored after the run


def _child(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_harness_never_imports_tensorflow(tiny_models, tmp_path):
    """A whole host measurement plus every harness module, in a fresh interpreter."""
    code = f"""
import sys
import android_harness.cli as cli
import android_harness.adb, android_harness.device, android_harness.host
import android_harness.results, android_harness.conditions, android_harness.inputs
rc = cli.main(cli.parse_args(["host", {str(tiny_models['qat_int8'])!r}, "--repeats", "1",
                              "--min-seconds", "0.01", "--warmup-seconds", "0", "-q",
                              "--out", {str(tmp_path / 'o')!r}]))
assert rc == 0, rc
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras"))
assert not heavy, heavy
print("ok")
"""
    res = _child(code)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr


@pytest.mark.parametrize("argv", [["--help"], ["host", "--help"], ["bench", "--help"],
                                  ["devices", "--help"], ["--version"]])
def test_module_entry_point_help(argv):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "android_harness", *argv], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "android-harness" in res.stdout


def test_parse_args_is_separate_from_main():
    from android_harness import cli

    args = cli.parse_args(["host", "a.tflite", "--threads", "1,4", "--delegate", "cpu,xnnpack"])
    assert (args.command, args.threads, args.delegate) == ("host", [1, 4], ["cpu", "xnnpack"])
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["host", "a.tflite", "--threads", "one"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        cli.parse_args(["bench", "a.tflite", "--serial", "X", "--all"])


def test_debug_shows_the_traceback(run_cli, tmp_path):
    code, _, err = run_cli("host", tmp_path / "missing.tflite")
    assert code == 2 and err.startswith("error: Model file does not exist")
    assert "Traceback" not in err
    code, _, err = run_cli("host", tmp_path / "missing.tflite", "--debug")
    assert code == 2 and "Traceback" in err


@pytest.fixture
def spinner():
    """Another process keeping one CPU busy, as a neighbour's test run does."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


def test_background_cpu_is_recorded_and_waited_for(tiny_models, run_cli, fast, tmp_path,
                                                   spinner):
    out = tmp_path / "out"
    code, _, err = run_cli("host", tiny_models["float32"], "--repeats", "1", "--wait-quiet",
                           "0.5", "--thermal-poll", "0.1", "--thermal-timeout", "0.5",
                           "--out", out, *fast, "--min-seconds", "0.3")  # the last one wins
    assert code == 0, err
    (m,) = json.loads((out / "results.json").read_text())["results"][0]["repeat_measurements"]
    assert m["background_cpu"] >= 0.5  # the spinner's CPU, not ours
    assert m["wait_timed_out"] and m["wait_s"] >= 0.5


def test_compiled_engine_times_litert_compiled_model(tiny_models, run_cli, fast, tmp_path):
    """--engine compiled: the CompiledModel API that LiteRT's own benchmark script times."""
    out = tmp_path / "out"
    code, stdout, err = run_cli("host", tiny_models["float32"], tiny_models["qat_int8"],
                                "--engine", "compiled", "--repeats", "2", "--min-runs", "30",
                                "--out", out, *fast)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    tool = doc["targets"][0]["tool"]
    assert tool["engine"] == "compiled" and "CompiledModel" in tool["name"]
    for r in doc["results"]:
        assert r["status"] == "ok" and r["invokes"] >= 60 and r["p50_us"] > 0
    code, _, err = run_cli("host", tiny_models["float32"], "--engine", "compiled",
                           "--delegate", "cpu", "--out", tmp_path / "o2", *fast)
    assert code == 2 and "compiled engine always uses LiteRT's CPU accelerator" in err


# -- untrusted models and hostile arguments (models built from scratch: no TensorFlow) ------
from tests import tflite_craft as craft  # noqa: E402


@pytest.fixture
def scratch_model(tmp_path) -> Path:
    path = tmp_path / "tiny.tflite"
    path.write_bytes(craft.tiny_model())
    return path


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_too_many_threads_is_a_usage_error_before_loading(scratch_model, run_cli, fast,
                                                           monkeypatch):
    from android_harness import host

    monkeypatch.setattr(host, "make_interpreter", lambda *a, **k: pytest.fail("loaded"))
    code, _, err = run_cli("host", scratch_model, "--threads", "1,100000", *fast)
    assert code == 2
    assert "at most 256. Received: 100000" in _one_line(err)


def test_a_model_that_crashes_litert_is_contained_in_a_child(tmp_path):
    """RELU re-labelled as SPLIT passes the structural pre-check and segfaults LiteRT; the
    host run used to die with SIGSEGV. Run in a subprocess so a regression cannot take
    pytest down with it."""
    def to_split(m):
        m.operatorCodes[0].builtinCode = 49
        m.operatorCodes[0].deprecatedBuiltinCode = 49

    model = tmp_path / "split.tflite"
    model.write_bytes(craft.edit(craft.tiny_model(), to_split))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "android_harness", "host", str(model),
                          "--repeats", "1", "--min-seconds", "0.01", "--warmup-seconds", "0",
                          "-q", "--out", str(tmp_path / "o")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    line = _one_line(res.stderr)
    assert "crashed (signal SIGSEGV)" in line and str(model) in line


def test_a_crafted_model_is_prechecked_before_loading(tmp_path, run_cli, fast):
    model = tmp_path / "amplified.tflite"
    model.write_bytes(craft.repeated_offsets(20_000, 20_000))
    code, _, err = run_cli("host", model, *fast)
    assert code == 2 and "repeated offsets" in _one_line(err)


def test_a_fifo_model_fails_at_once(tmp_path, run_cli, fast):
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    code, _, err = run_cli("host", fifo, *fast)  # is_file() said "does not exist" (wrong)
    line = _one_line(err)
    assert code == 2 and "is a named pipe (FIFO), not a regular file" in line


def test_a_device_file_is_not_called_missing(run_cli, fast):
    code, _, err = run_cli("host", os.devnull, *fast)
    line = _one_line(err)
    assert code == 2 and "character device" in line and "does not exist" not in line


@pytest.mark.parametrize("kind", ["file", "inside-a-file"])
def test_out_that_cannot_be_a_directory_fails_before_measuring(scratch_model, tmp_path,
                                                                run_cli, fast, monkeypatch,
                                                                kind):
    from android_harness import protocol

    monkeypatch.setattr(protocol, "run_targets", lambda *a, **k: pytest.fail("measured"))
    taken = tmp_path / "results.txt"
    taken.write_text("someone's file")
    out = taken if kind == "file" else taken / "sub"
    code, _, err = run_cli("host", scratch_model, "--out", out, *fast)
    line = _one_line(err)
    assert code == 2 and "--out" in line and str(out) in line
    assert taken.read_text() == "someone's file"


def test_a_scratch_model_still_measures(scratch_model, tmp_path, run_cli, fast):
    code, _, err = run_cli("host", scratch_model, "--repeats", "1", "--out", tmp_path / "o",
                           *fast)
    assert code == 0, err
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert doc["results"][0]["status"] == "ok" and doc["models"][0]["size_bytes"] == \
        scratch_model.stat().st_size


@pytest.mark.parametrize("text, shown", [
    ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
    ("a\rb\x00c", "a\\rb\\x00c"),
    ("bidi\u202etxt.exe", "bidi\\u202etxt.exe"),
    ("plain text, ünïcödé\nsecond line", "plain text, ünïcödé\nsecond line"),
])
def test_printable_escapes_control_characters(text, shown):
    from android_harness.errors import printable

    assert printable(text) == shown
    assert "\n" not in printable("a\nb", keep="")
