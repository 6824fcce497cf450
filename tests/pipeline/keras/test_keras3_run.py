"""A Keras 3 model through `qat run` end to end (rebuilt as tf_keras, checked equal first)."""

import json

import pytest

from pipeline.core import keras_env
from pipeline.cli.app import main, parse_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras3_model_file(tmp_path_factory, digits):
    """A small CNN built and trained in Keras 3 on digits, saved as .keras by Keras 3."""
    k3 = keras_env.load_keras3()
    # the product's seeding (deterministic ops included) whatever ran before in this process:
    # op determinism is process-wide, so without it the result would depend on test order
    keras_env.set_seed(0)
    k3.utils.set_random_seed(0)
    L = k3.layers
    inp = k3.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    h = L.BatchNormalization(momentum=0.9)(h)
    h = L.Activation("relu")(h)
    h = L.DepthwiseConv2D(3, padding="same")(h)
    h = L.ReLU()(h)
    h = L.GlobalAveragePooling2D()(h)
    model = k3.Model(inp, L.Dense(10)(h))
    model.compile(k3.optimizers.Adam(3e-3),
                  k3.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits["x_train"], digits["y_train"], epochs=40, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("k3") / "k3_cnn.keras"
    model.save(path)
    return path


def test_keras3_file_runs_end_to_end(keras3_model_file, digits_npz, tmp_path, capsys):
    code = main(parse_args([
        "run", "--model", str(keras3_model_file), "--data", str(digits_npz), "--output",
        str(tmp_path), "--epochs", "2", "--quiet", "--set", "gates.max_accuracy_drop_pp=5",
        "--set", "gates.min_agreement=0.98"]))
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((tmp_path / "k3_cnn" / "report.json").read_text())
    assert report["model"]["kind"] == "keras3"
    t = report["model"]["keras3_translation"]
    assert t["max_abs_diff"] <= 1e-5 * max(1.0, t["output_scale"])  # keras3.compare_outputs
    variants = {v["variant"]: v for v in report["variants"]}
    assert variants["qat_int8"]["full_int8"] is True
    assert report["keras"]["float_accuracy"] >= 0.9  # trained: 40 epochs


def test_untranslatable_keras3_layer_is_named(tmp_path, digits_npz, capsys):
    k3 = keras_env.load_keras3()

    @k3.saving.register_keras_serializable(package="tests")
    class Mystery(k3.layers.Layer):
        def call(self, x):
            return x * 2.0

    inp = k3.Input((8, 8, 1))
    h = Mystery(name="mystery")(inp)
    model = k3.Model(inp, k3.layers.Dense(10)(k3.layers.Flatten()(h)))
    path = tmp_path / "m.keras"
    model.save(path)
    code = main(parse_args(["run", "--model", str(path), "--data", str(digits_npz),
                            "--output", str(tmp_path / "out"), "--quiet"]))
    err = capsys.readouterr().err
    assert code == 2
    line = next(l for l in err.splitlines() if l.startswith("error:"))
    assert "mystery" in line and "Mystery" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
