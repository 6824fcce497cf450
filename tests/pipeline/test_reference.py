"""Standalone verification against the reference bundle, without TensorFlow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.pipeline import tflite_craft as craft

pytestmark = pytest.mark.slow

# Runs the CLI with TensorFlow, tf_keras, tfmot and scikit-learn made unimportable: the
# standalone path must work with only numpy and ai-edge-litert.
_BLOCKED = ("import sys\n"
            "for m in ('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization',\n"
            "          'sklearn'):\n"
            "    sys.modules[m] = None\n"
            "from pipeline.cli import main, parse_args\n"
            "code = main(parse_args(sys.argv[1:]))\n"
            "heavy = [m for m in ('tensorflow', 'sklearn') if sys.modules.get(m) is not None]\n"
            "assert not heavy, heavy\n"
            "sys.exit(code)\n")


def _blocked_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", _BLOCKED, *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_bundle_is_written(demo_run):
    _, run_dir = demo_run
    doc = json.loads((run_dir / "reference" / "expected.json").read_text())
    assert sorted(doc["variants"]) == ["float32", "ptq_int8", "qat_int8"]
    with np.load(run_dir / "reference" / "inputs.npz") as npz:
        assert npz["x"].shape == (450, 8, 8, 1) and npz["y"].shape == (450,)
    with np.load(run_dir / "reference" / "qat_int8_outputs.npz") as npz:
        assert npz["arr_0"].dtype == np.int8


@pytest.mark.parametrize("variant", ["float32", "ptq_int8", "qat_int8"])
def test_standalone_check_passes_without_tensorflow(demo_run, variant):
    _, run_dir = demo_run
    r = _blocked_cli("verify", str(run_dir / f"{variant}.tflite"), "--reference", str(run_dir),
                     "--json")
    assert r.returncode == 0, r.stderr
    chk = json.loads(r.stdout)["reference"]
    assert chk["passed"] and chk["variant"] == variant and chk["matched_by"] == "sha256"
    assert chk["top1_agreement"] == 1.0 and chk["exact_fraction"] == 1.0


def test_a_changed_model_fails_the_reference(demo_run, tmp_path):
    _, run_dir = demo_run
    content = (run_dir / "qat_int8.tflite").read_bytes()

    def sabotage(m):
        _, t = craft.tensor_named(m, "quant_logits/MatMul", constant=True)
        m.buffers[t.buffer].data = -np.array(m.buffers[t.buffer].data)

    bad = tmp_path / "qat_int8.tflite"
    bad.write_bytes(craft.edit(content, sabotage))
    r = _blocked_cli("verify", str(bad), "--reference", str(run_dir / "reference"))
    assert r.returncode == 1, r.stderr
    assert "reference check FAILED as qat_int8 (matched by file name" in r.stdout
    assert "top-1 agreement" in r.stdout and "gate failed" in r.stdout


def test_reference_usage_errors(demo_run, tmp_path):
    _, run_dir = demo_run
    r = _blocked_cli("verify", str(run_dir / "qat_int8.tflite"), "--reference", str(tmp_path))
    assert r.returncode == 2 and "No reference bundle found" in r.stderr
    other = tmp_path / "mystery.tflite"
    other.write_bytes((run_dir / "float32.tflite").read_bytes()[:-1] + b"\x01")
    r = _blocked_cli("verify", str(other), "--reference", str(run_dir))
    assert r.returncode == 2 and "Pass --variant" in r.stderr
