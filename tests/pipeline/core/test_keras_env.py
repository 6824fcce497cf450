"""keras_env: Keras 2 is selected, a wrong setup is reported with its fix, and the helpers
that stand in for tf_keras internals (layer-name counters, safe mode) do what they say.
Only keras_env importing TensorFlow/Keras/tfmot is checked in tests/test_architecture.py."""

import re
import subprocess
import sys

import numpy as np
import pytest

from pipeline.core import keras_env
from pipeline.core.errors import KerasEnvError, ModelFileError
from tests.conftest import REPO, next_auto_name


def _child(code: str, **env):
    import os

    e = {**os.environ, "PYTHONPATH": str(REPO), **env}
    for k, v in env.items():
        if v is None:
            e.pop(k)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=180)


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


def _number(name: str) -> int:
    return int(re.fullmatch(r"conv2d(?:_(\d+))?", name).group(1) or 0)


def test_reserved_names_are_skipped_by_automatic_names(env):
    start = _number(next_auto_name(env.keras, "Conv2D"))
    taken = {f"conv2d_{start + k}" for k in (0, 3, 40)} | {"Conv2D_99", "dense/kernel"}
    keras_env.reserve_layer_names(taken)
    after = [env.keras.layers.Conv2D(1, 1).name for _ in range(100)]
    assert not set(after) & taken, after
    assert _number(after[0]) == start + 41  # the next free name after the last one in reach


def test_a_far_away_name_costs_nothing_and_cannot_collide(env):
    start = _number(next_auto_name(env.keras, "Conv2D"))
    keras_env.reserve_layer_names({f"conv2d_{start + 10**12}"})  # no 10**12 probe layers
    assert _number(env.keras.layers.Conv2D(1, 1).name) <= start + 2


def test_a_wall_of_names_is_refused_not_walked(env):
    start = _number(next_auto_name(env.keras, "Conv2D"))
    wall = [f"conv2d_{start + 50 * k}" for k in range(keras_env.MAX_NAME_PROBES // 50 + 2)]
    with pytest.raises(ModelFileError, match="occupy too many of tf_keras' automatic names"):
        keras_env.reserve_layer_names(wall)


def test_safe_mode_reaches_legacy_h5_loading(env, tmp_path):
    """load_model(safe_mode=...) only covers .keras files; call_in_safe_mode covers .h5 too."""
    keras = env.keras
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Lambda(lambda x: x * 2.0, name="double")(inp))
    path = tmp_path / "lambda.h5"
    model.save(path)

    def load():
        return keras.models.load_model(path, compile=False)

    with pytest.raises(ValueError, match="Lambda layer with a Python `lambda`"):
        keras_env.call_in_safe_mode(load, True)
    loaded = keras_env.call_in_safe_mode(load, False)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), 2 * x)


def test_saved_metadata_proto_parses_a_saved_models_metadata(env, tmp_path):
    keras = env.keras
    inp = keras.Input((2,))
    keras.Model(inp, keras.layers.Dense(1, name="head")(inp)).save(tmp_path / "sm")
    proto = keras_env.saved_metadata_proto()
    proto.ParseFromString((tmp_path / "sm" / "keras_metadata.pb").read_bytes())
    assert any('"name": "head"' in node.metadata for node in proto.nodes)
