import ast
import subprocess
import sys

import pytest

from pipeline.core import keras_env
from pipeline.core.errors import KerasEnvError
from tests.conftest import REPO

HEAVY = {"tensorflow", "tf_keras", "keras", "tensorflow_model_optimization"}


def _child(code: str, **env):
    import os

    e = {**os.environ, "PYTHONPATH": str(REPO), **env}
    for k, v in env.items():
        if v is None:
            e.pop(k)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=180)


def test_only_keras_env_imports_tensorflow():
    """docs/architecture.md: keras_env is THE module importing TensorFlow/Keras/tfmot."""
    offenders = []
    for pkg in ("pipeline", "models", "android_harness"):
        for path in (REPO / pkg).rglob("*.py"):
            if path.name == "keras_env.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                bad = [n for n in names if n.split(".")[0] in HEAVY]
                # tf_keras' own serialization scope is used by modelio for safe loading
                bad = [n for n in bad if n != "tf_keras.src.saving"]
                if bad:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {bad}")
    assert offenders == []


def test_legacy_keras_is_selected():
    env = keras_env.load()
    assert env.tf.keras.__name__.startswith("tf_keras")
    assert env.versions["tensorflow"].split(".")[:2] == env.versions["tf_keras"].split(".")[:2]


def test_explicit_keras3_choice_is_reported_with_the_fix():
    r = _child("from pipeline.core import keras_env; keras_env.load()", TF_USE_LEGACY_KERAS="0")
    assert "TF_USE_LEGACY_KERAS is not enabled" in r.stderr
    assert "set TF_USE_LEGACY_KERAS=1" in r.stderr


@pytest.mark.slow
def test_tensorflow_imported_first_with_keras3_is_reported():
    code = ("import tensorflow as tf; tf.keras.layers  # resolves Keras 3\n"
            "from pipeline.core import keras_env\n"
            "try:\n    keras_env.load()\nexcept Exception as e:\n    print(type(e).__name__, e)")
    r = _child(code, TF_USE_LEGACY_KERAS=None)
    assert "KerasEnvError" in r.stdout and "resolved to Keras 3" in r.stdout, r.stdout + r.stderr


def test_minor_version_mismatch_names_the_pin(monkeypatch):
    real = keras_env._version
    monkeypatch.setattr(keras_env, "_ENV", None)
    monkeypatch.setattr(keras_env, "_version",
                        lambda d: "2.20.0" if d in ("tf-keras", "tf_keras") else real(d))
    with pytest.raises(KerasEnvError) as err:
        keras_env.load()
    assert "minor versions differ" in str(err.value)
    assert "pip install 'tf-keras==2.21.*'" in str(err.value)
