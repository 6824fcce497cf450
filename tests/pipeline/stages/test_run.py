"""End to end on digits: the README's main job, a failed gate, and kill -9 then --resume.

The pipeline's acceptance numbers are asserted on the bundled default recipe: float >= 97 %,
qat_int8.tflite >= float - 0.5 pp, agreement Keras QAT vs qat_int8 >= 99.5 %, int8 I/O and no
float activation tensor.
"""

import json
import os
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from pipeline.stages import config
from pipeline.core.artifacts import sha256_file
from pipeline.cli.app import main, parse_args
from pipeline.tflite.tflite_model import TFLiteModel
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture
def demo(demo_run):
    return demo_run


def test_demo_writes_every_artifact_and_exits_0(demo):
    code, run_dir = demo
    assert code == 0
    for name in ("float32.tflite", "ptq_int8.tflite", "qat_int8.tflite", "report.md",
                 "report.json", "manifest.json", "config.toml", "model_card.json"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.parent.glob(".digits_cnn*")), "staging left behind"


def test_demo_meets_the_accuracy_targets(demo):
    _, run_dir = demo
    report = json.loads((run_dir / "report.json").read_text())
    assert report["schema_version"] == 1 and report["status"] == "passed"
    float_acc = report["keras"]["float_accuracy"]
    variants = {v["variant"]: v for v in report["variants"]}
    agreement = {a["candidate"]: a for a in report["agreement"]}
    assert float_acc >= 0.97
    assert variants["qat_int8"]["accuracy"] >= float_acc - 0.005
    assert agreement["qat_int8"]["top1_agreement"] >= 0.995
    assert agreement["qat_int8"]["reference"] == "keras_qat"
    assert variants["float32"]["accuracy"] == pytest.approx(float_acc, abs=1 / 450)
    sizes = {k: v["size_bytes"] for k, v in variants.items()}
    assert sizes["qat_int8"] < sizes["float32"] and sizes["ptq_int8"] < sizes["float32"]


def test_demo_qat_model_is_full_int8_with_int8_io(demo):
    _, run_dir = demo
    view = TFLiteModel.from_file(run_dir / "qat_int8.tflite")
    (inp,), (out,) = view.inputs(), view.outputs()
    assert inp.dtype == "INT8" and out.dtype == "INT8"
    floats = [t for t in view.main.tensors if t.dtype == "FLOAT32" and not t.is_constant]
    assert floats == []
    assert view.verdict().full_int8
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["input"]["scale"] == pytest.approx(inp.scale)
    assert card["input"]["zero_point"] == inp.zero_point
    assert card["output"]["zero_point"] == out.zero_point
    assert "pixels / 16" in card["preprocessing"]["transform"]


def test_manifest_hashes_and_saved_config(demo):
    _, run_dir = demo
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for rel, meta in manifest["files"].items():
        assert sha256_file(run_dir / rel) == meta["sha256"], rel
    assert {"float32.tflite", "report.json", "config.toml"} <= set(manifest["files"])
    for key in ("python", "tensorflow", "tf_keras", "tensorflow_model_optimization",
                "ai_edge_litert"):
        assert manifest["versions"][key], key
    assert set(manifest["timings_s"]) >= {"load", "annotate", "finetune", "convert", "verify"}
    saved = config.from_dict(tomllib.loads((run_dir / "config.toml").read_text()))
    assert saved == config.load("digits_cnn", {"output.dir": str(run_dir.parent),
                                               "qat.verbose": "0"})
    assert manifest["config_sha256"] == saved.hash()
    md = (run_dir / "report.md").read_text()
    assert "| `qat_int8.tflite` |" in md and "Quality gates" in md


def test_saved_qat_model_converts_again(demo, tmp_path, capsys):
    _, run_dir = demo
    code = main(parse_args(["convert", str(run_dir / "keras" / "qat_model.h5"), "--data",
                            "digits", "--output", str(tmp_path)]))
    assert code == 0, capsys.readouterr().err
    assert TFLiteModel.from_file(tmp_path / "qat_int8.tflite").verdict().full_int8


def test_failed_gate_exits_1_and_the_report_says_which(tmp_path, trained_h5, digits_npz,
                                                      capsys):
    code = main(parse_args([
        "run", "--model", str(trained_h5), "--data", str(digits_npz), "--output", str(tmp_path),
        "--epochs", "1", "--quiet", "--set", "convert.variants=qat_int8",
        "--set", "gates.min_float_accuracy=1.0"]))
    err = capsys.readouterr().err
    assert code == 1
    report = json.loads((tmp_path / "digits_float" / "report.json").read_text())
    failed = [g["name"] for g in report["gates"] if not g["passed"]]
    assert failed == ["min_float_accuracy"] and report["status"] == "gates_failed"
    assert "gate failed: min_float_accuracy" in err
    assert "**FAIL**" in (tmp_path / "digits_float" / "report.md").read_text()


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, trained_h5, digits_npz, capsys):
    args = ["run", "--model", str(trained_h5), "--data", str(digits_npz), "--output",
            str(tmp_path), "--epochs", "6", "--quiet", "--set", "qat.early_stopping_patience=0",
            "--set", "convert.variants=qat_int8"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / ".digits_float.partial" / "checkpoints" / "state.json"
    deadline = time.time() + 240
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            done = json.loads(state.read_text())["epochs_done"]
            if done >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done >= 2, "the run never checkpointed two epochs"
    final = tmp_path / "digits_float"
    assert not final.exists(), "a killed run must not leave files under the final name"

    code = main(parse_args(args + ["--resume"]))
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((final / "report.json").read_text())
    q = report["qat"]
    assert q["resumed_from_epoch"] >= 2
    assert q["resumed_from_epoch"] + q["epochs_run"] == 6
    assert len(q["history"]["loss"]) == 6
    assert "resumed after epoch" in err
    # the manifest lists every file of the run, those the killed attempt wrote included
    manifest = json.loads((final / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [p for p in on_disk if p != "manifest.json"]
    assert any(p.startswith("checkpoints/epoch_") for p in manifest["files"])
    assert not (tmp_path / ".digits_float.lock").exists()  # the killed run's lock was taken over


def test_input_model_with_nan_weights_stops_at_load(env, trained_h5, digits_npz, tmp_path,
                                                    capsys):
    """NaN weights in the model file: exit 2 before any training, the weight named, nothing
    written, and the learning rate not blamed (the fault is the file's)."""
    from pipeline.stages.run import _save_h5

    model = env.keras.models.load_model(trained_h5, compile=False)
    w = model.layers[1].weights[0]
    w.assign(w.numpy() * float("nan"))
    bad = tmp_path / "nan.h5"
    _save_h5(model, bad)
    code = main(parse_args(["run", "--model", str(bad), "--data", str(digits_npz),
                            "--output", str(tmp_path / "out"), "--quiet"]))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith("error: The model's weights contain NaN/inf") and w.name in err
    assert "learning_rate" not in err
    assert not (tmp_path / "out" / "nan").exists()


def test_float_model_below_the_gate_stops_before_qat_and_conversion(trained_h5, digits_npz,
                                                                    tmp_path, capsys):
    """gates.min_float_accuracy is checked on the float model first: exit 1, the accuracy in
    the log, a report that names the gate, and no QAT, no conversion, no .tflite."""
    code = main(parse_args(["run", "--model", str(trained_h5), "--data", str(digits_npz),
                            "--output", str(tmp_path), "--quiet",
                            "--set", "gates.min_float_accuracy=0.9999"]))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "stopped before QAT and conversion" in err and "below gates.min_float_accuracy " \
        "99.99 %" in err
    assert "[annotate]" not in err and "[convert]" not in err
    run_dir = tmp_path / "digits_float"
    assert not list(tmp_path.rglob("*.tflite")) and not (run_dir / "keras").exists()
    report = json.loads((run_dir / "report.json").read_text())
    assert [g["name"] for g in report["gates"] if not g["passed"]] == ["min_float_accuracy"]
    assert report["variants"] == [] and report["status"] == "gates_failed"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == {"config.toml", "report.json", "report.md"}


def test_manifest_records_what_decides_the_numbers(demo):
    """CPU, its vector extensions, oneDNN on/off and the steering variables, in the manifest
    and the report's heading; oneDNN as this process's TensorFlow runs it."""
    from pipeline.core import keras_env

    _, run_dir = demo
    m = json.loads((run_dir / "manifest.json").read_text())["machine"]
    assert m["cpu"] and m["machine"] and m["cores"] >= 1
    assert m["onednn_graph_rewrites"] is keras_env.onednn_enabled()
    assert m["environment"]["TF_ENABLE_ONEDNN_OPTS"] == os.environ["TF_ENABLE_ONEDNN_OPTS"]
    assert f"Measured on {m['cpu']}" in (run_dir / "report.md").read_text()
