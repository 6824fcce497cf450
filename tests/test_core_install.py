"""The core install (`pip install qat-deploy`: numpy + ai-edge-litert) runs `qat inspect`,
`qat verify --reference` and `android-harness host` without TensorFlow; every command that
needs the training stack exits 2 with one line naming the `qat` extra.

The real CLIs run in child processes whose ``sitecustomize`` puts an import blocker first on
``sys.meta_path``: TensorFlow, tf_keras, Keras 3, tfmot and scikit-learn raise
ModuleNotFoundError, and every attempt to import one is logged, so "never imported" means not
even tried. scripts/check_core_install.sh checks the same in a fresh venv with the packages
really absent (`make check-core`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import keras_env
from pipeline.core.errors import KerasEnvError
from tests import tflite_craft as craft
from tests.conftest import REPO

EXTRA = "qat-deploy[qat]"
BLOCKED = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "sklearn")
_SITECUSTOMIZE = f'''\
import os
import sys

_BLOCKED = {BLOCKED!r}
_LOG = os.environ.get("QAT_BLOCKED_LOG")


class _CoreInstall:
    """A meta-path finder that makes the training stack unimportable, as in a core install."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in _BLOCKED:
            return None
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(name + "\\n")
        raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)


sys.meta_path.insert(0, _CoreInstall())
'''


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("core_install")
    (d / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return d


def _core(blocker: Path, tmp_path: Path, module: str, *args: str):
    """Run ``python -m module ARGS`` as a core install would: (result, blocked imports tried)."""
    log = tmp_path / "blocked-imports.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)]),
           "QAT_BLOCKED_LOG": str(log)}
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=180)
    tried = sorted(set(log.read_text().split())) if log.exists() else []
    return r, tried


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A run directory as `qat run` leaves it, for a model built without TensorFlow
    (tflite_craft's one-op int8 model): the .tflite and a reference bundle written by the
    pipeline's own writer from the outputs LiteRT computes on seeded inputs."""
    from pipeline.core.artifacts import RunDir
    from pipeline.tflite import reference
    from pipeline.tflite.runtime import ModelRunner

    run_dir = RunDir(tmp_path_factory.mktemp("runs") / "tiny", log=lambda *_: None)
    content = craft.tiny_model(n=4)
    run_dir.write_bytes("tiny.tflite", content)
    rng = np.random.default_rng(0)
    x = rng.uniform(-6.4, 6.4, (32, 4)).astype(np.float32)  # the int8 range at scale 0.05
    runner = ModelRunner(content)
    raw = runner.run(x, dequantize=False)
    y = np.argmax(raw[0], axis=1)  # the model's own top-1: accuracy 1.0 by construction
    reference.save(run_dir, x, y, {"tiny": (content, raw, 1.0,
                                            [o.to_dict() for o in runner.outputs])})
    return run_dir.commit()


def test_the_blocker_blocks(blocker, tmp_path):
    """Without this the other tests could pass on a machine where nothing is blocked."""
    code = ("import importlib\n"
            f"for name in {BLOCKED!r}:\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except ModuleNotFoundError as exc:\n        print(exc)\n")
    r, tried = _core(blocker, tmp_path, "pipeline.core.keras_env")  # sets variables only
    assert r.returncode == 0 and tried == [], r.stderr
    env = {**os.environ, "PYTHONPATH": str(blocker), "QAT_BLOCKED_LOG": str(tmp_path / "log")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"No module named '{n}'" for n in BLOCKED]
    assert (tmp_path / "log").read_text().split() == list(BLOCKED)


def test_inspect_runs_without_tensorflow(blocker, bundle, tmp_path):
    r, tried = _core(blocker, tmp_path, "pipeline", "inspect", str(bundle / "tiny.tflite"),
                     "--json")
    assert r.returncode == 0, r.stderr
    assert tried == []
    doc = json.loads(r.stdout)
    assert doc["ops"] == {"RELU": 1} and doc["verdict"]["full_int8"] is True, doc


def test_verify_reference_runs_without_tensorflow(blocker, bundle, tmp_path):
    r, tried = _core(blocker, tmp_path, "pipeline", "verify", str(bundle / "tiny.tflite"),
                     "--reference", str(bundle), "--json")
    assert r.returncode == 0, r.stderr
    assert tried == []
    chk = json.loads(r.stdout)["reference"]
    assert chk["passed"] and chk["matched_by"] == "sha256" and chk["samples"] == 32
    assert chk["exact_fraction"] == 1.0 and chk["top1_agreement"] == 1.0


def test_verify_reference_still_fails_a_changed_model(blocker, bundle, tmp_path):
    """The core install's check is a real one: other weights, other outputs, exit 1."""
    other = tmp_path / "tiny.tflite"
    other.write_bytes(craft.tiny_model(n=4, opcode="RELU6"))  # clips inputs above 6 (120 LSB)
    r, tried = _core(blocker, tmp_path, "pipeline", "verify", str(other), "--reference",
                     str(bundle))
    assert tried == []
    assert r.returncode == 1, r.stdout + r.stderr
    assert "reference check FAILED as tiny (matched by file name" in r.stdout


def test_android_harness_host_runs_without_tensorflow(blocker, bundle, tmp_path):
    out = tmp_path / "harness"
    r, tried = _core(blocker, tmp_path, "android_harness", "host", str(bundle / "tiny.tflite"),
                     "--repeats", "1", "--min-runs", "5", "--min-seconds", "0.01",
                     "--warmup-seconds", "0", "--cooldown", "0", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert tried == []
    doc = json.loads((out / "results.json").read_text())
    (res,) = doc["results"]
    assert res["model"] == "tiny" and res["status"] == "ok" and res["invokes"] >= 5, res


@pytest.mark.parametrize("argv, blocked", [
    (["run", "digits_cnn"], "tensorflow"),
    (["convert", "model.h5", "--data", "data.npz"], "tensorflow"),
    (["inspect", "--coverage", "digits_cnn"], "tensorflow"),
    (["verify", "tiny.tflite", "--data", "digits"], "sklearn"),
    (["verify", "tiny.tflite", "--data", "data.npz", "--runtime", "tensorflow"], "tensorflow"),
    (["verify", "tiny.tflite", "--data", "data.npz", "--runtime", "tensorflow",
      "--no-isolate"], "tensorflow"),
], ids=["run", "convert", "inspect-coverage", "verify-digits", "runtime-tensorflow",
        "runtime-tensorflow-in-process"])
def test_training_commands_name_the_extra(blocker, tmp_path, argv, blocked):
    (tmp_path / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(504))
    (tmp_path / "tiny.tflite").write_bytes(craft.tiny_model(n=4))
    z = np.zeros((2, 4), np.float32)
    np.savez(tmp_path / "data.npz", x_train=z, y_train=np.zeros(2, np.int64), x_test=z,
             y_test=np.zeros(2, np.int64))
    r, tried = _core(blocker, tmp_path, "pipeline", *argv)
    assert r.returncode == 2, r.stdout + r.stderr
    assert blocked in tried
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    # progress lines may come first ("[load] ..."); the error is the last line, and the only
    # one that names the extra
    assert lines[-1].startswith("error: ") and EXTRA in lines[-1], r.stderr
    assert sum(EXTRA in line for line in lines) == 1, r.stderr


@pytest.mark.parametrize("missing", ["tensorflow", "tensorflow-model-optimization"])
def test_a_missing_distribution_names_the_extra(monkeypatch, missing):
    """A core install has no such distribution at all (what the fresh venv of
    scripts/check_core_install.sh sees): load() says which extra brings it."""
    real = keras_env._version
    monkeypatch.setattr(keras_env, "_ENV", None)
    monkeypatch.setattr(keras_env, "_version",
                        lambda d: None if d in (missing, "tensorflow-cpu") else real(d))
    with pytest.raises(KerasEnvError) as err:
        keras_env.load()
    assert "is not installed" in str(err.value) and EXTRA in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.slow
def test_the_demo_artifacts_work_without_tensorflow(blocker, demo_run, tmp_path):
    """The same three commands on what `make demo` writes (the fresh-venv check's input)."""
    code, run_dir = demo_run
    assert code == 0
    model = str(run_dir / "qat_int8.tflite")
    for module, *argv in (("pipeline", "inspect", model, "--require-full-int8"),
                          ("pipeline", "verify", model, "--reference", str(run_dir)),
                          ("android_harness", "host", model, "--repeats", "1", "--min-seconds",
                           "0.05", "--warmup-seconds", "0", "--cooldown", "0", "--out",
                           str(tmp_path / "harness"), "-q")):
        r, tried = _core(blocker, tmp_path, module, *argv)
        assert r.returncode == 0, (argv, r.stderr)
        assert tried == [], (argv, tried)
