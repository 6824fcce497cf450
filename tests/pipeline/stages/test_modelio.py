"""Model loading: supported formats, and files that must be refused before any code runs."""

import subprocess
import sys

import numpy as np
import pytest

from pipeline.stages import modelio
from pipeline.core.errors import ModelFileError


def _lambda_model(keras, marker):
    """A model whose Lambda writes ``marker`` whenever its Python code runs."""
    def touch(x, path=str(marker)):
        open(path, "w").write("ran")
        return x

    inp = keras.Input((8, 8, 1))
    h = keras.layers.Lambda(lambda x: touch(x), name="evil")(inp)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


@pytest.mark.parametrize("fmt", ["h5", "keras", "savedmodel"])
def test_lambda_is_refused_without_running_its_code(env, tmp_path, fmt):
    marker = tmp_path / "marker"
    model = _lambda_model(env.keras, marker)
    path = tmp_path / ("m" if fmt == "savedmodel" else f"m.{fmt}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path, **({"save_format": "tf"} if fmt == "savedmodel" else {}))
    marker.unlink(missing_ok=True)
    with pytest.raises(ModelFileError) as err:
        modelio.load_model(path=str(path))
    assert "Lambda" in str(err.value) and "--trust-model" in str(err.value)
    assert not marker.exists(), "the Lambda's code ran while loading"


def test_trust_model_loads_a_lambda(env, tmp_path):
    keras = env.keras
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Lambda(lambda x: x * 2.0, name="double")(inp)
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(h)))
    path = tmp_path / "m.h5"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    with pytest.raises(ModelFileError, match="Lambda"):
        modelio.load_model(path=str(path))
    loaded = modelio.load_model(path=str(path), trust_model=True)
    x = np.ones((2, 8, 8, 1), np.float32)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_formats_round_trip(env, trained_model, tmp_path, digits):
    import warnings

    x = digits["x_test"][:8]
    want = trained_model.predict(x, verbose=0)
    for name, kwargs in (("m.h5", {}), ("m.keras", {}), ("sm", {"save_format": "tf"})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trained_model.save(tmp_path / name, **kwargs)
        loaded = modelio.load_model(path=str(tmp_path / name))
        assert not loaded.needs_training and not loaded.is_qat
        np.testing.assert_allclose(loaded.model.predict(x, verbose=0), want, atol=1e-6)


@pytest.mark.parametrize("setup, fragment", [
    (lambda p: p / "missing.h5", "does not exist"),
    (lambda p: p, "not a SavedModel"),
    (lambda p: [(p / "m.h5").write_bytes(b"<html>oops</html>"), p / "m.h5"][1],
     "not an HDF5 file"),
    (lambda p: [(p / "m.keras").write_bytes(b"PK\x03\x04junk"), p / "m.keras"][1],
     "not a zip archive"),
    (lambda p: [(p / "m.onnx").write_bytes(b"x"), p / "m.onnx"][1], "Unsupported model file"),
])
def test_unusable_files(env, tmp_path, setup, fragment):
    with pytest.raises(ModelFileError, match=fragment):
        modelio.load_model(path=str(setup(tmp_path)))


def test_weights_only_h5_is_explained(env, trained_model, tmp_path):
    path = tmp_path / "w.weights.h5"
    trained_model.save_weights(path)
    with pytest.raises(ModelFileError, match="weights only"):
        modelio.load_model(path=str(path))


def test_subclassed_model_is_refused_with_a_fix(env):
    keras = env.keras

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(10)

        def call(self, x):
            return self.d(keras.layers.Flatten()(x))

    net = Net()
    net(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ModelFileError, match="Subclassed") as err:
        modelio.check_model_shape(net, "net")
    assert "Functional API" in str(err.value)


@pytest.mark.slow
def test_keras3_file_is_recognised(tmp_path):
    """A .keras written by Keras 3 is identified from its metadata, not mis-loaded."""
    path = tmp_path / "k3.keras"
    code = ("import keras; m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]);"
            f"m.save({str(path)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    kind, config, version = modelio.read_stored_config(str(path))
    assert kind == "keras" and version.startswith("3.")
