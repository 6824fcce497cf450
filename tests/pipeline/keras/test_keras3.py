"""Keras 3 -> tf_keras translation (pipeline/keras/keras3.py): tiny real Keras 3 models, seeded.

Tolerance (docs/architecture.md, Tolerances): model outputs within 1e-5 x max(1, max|y|), and
every layer's output within 1e-5 of its own scale; each test also recomputes the outputs."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from pipeline.keras import keras3

from pipeline.core import keras_env
from pipeline.core.errors import KerasEnvError, ModelFileError
from tests.conftest import next_auto_name

ATOL = 1e-5


def _randomize(model, seed=0):
    """Seeded non-trivial weights (BN statistics included; variances kept positive)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        v = rng.normal(0.0, 0.5, tuple(w.shape))
        if "variance" in w.path:
            v = np.abs(v) + 0.5
        w.assign(v.astype("float32"))
    return model


def _assert_same(model3, t, seed=7):
    """Independent check of the returned figure on other inputs."""
    assert t.max_abs_diff <= ATOL * max(1.0, t.output_scale) and t.max_layer_rel_diff <= ATOL
    x = np.random.default_rng(seed).normal(0, 2, (3, *model3.inputs[0].shape[1:]))
    x = x.astype("float32")
    y3 = np.asarray(model3(x, training=False))
    y2 = t.model(x, training=False).numpy()
    assert y3.shape == y2.shape
    np.testing.assert_allclose(y2, y3, rtol=0, atol=ATOL * max(1.0, np.abs(y3).max()))
    assert t.model.count_params() == model3.count_params()


def _convnet(k3):
    L = k3.layers
    inp = k3.Input((12, 12, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(6.0, name="relu6")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="dw_bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.MaxPooling2D(2, name="maxpool")(x)
    x = L.SeparableConv2D(6, 3, padding="same", activation="relu", name="sep")(x)
    x = L.AveragePooling2D(2, name="avgpool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.2, name="drop")(x)
    out = L.Dense(5, activation="softmax", name="head")(x)
    return _randomize(k3.Model(inp, out, name="convnet"))


def test_functional_convnet_round_trips_through_a_keras3_file(k3, tmp_path):
    model3 = _convnet(k3)
    path = tmp_path / "convnet.keras"
    model3.save(path)
    assert keras3.is_keras3_file(path) and keras3.keras3_file_version(path).startswith("3.")
    t = keras3.translate_keras3_file(path)
    assert type(t.model).__module__.startswith("tf_keras")
    assert [layer.name for layer in t.model.layers] == [layer.name for layer in model3.layers]
    _assert_same(model3, t)
    bn3, bn2 = model3.get_layer("bn"), t.model.get_layer("bn")
    for a, b in zip(bn3.get_weights(), bn2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sequential_stays_sequential(k3):
    L = k3.layers
    model3 = _randomize(k3.Sequential([k3.Input((10,)), L.Dense(8, activation="relu"),
                                       L.LeakyReLU(negative_slope=0.1), L.Dense(3)]))
    t = keras3.to_tf_keras(model3)
    assert type(t.model).__name__ == "Sequential"
    assert t.model.layers[1].get_config()["alpha"] == pytest.approx(0.1)  # renamed argument
    _assert_same(model3, t)


def test_nested_models_used_as_layers(k3):
    L = k3.layers
    inner_seq = k3.Sequential([k3.Input((6, 6, 4)), L.Conv2D(4, 1), L.BatchNormalization()],
                              name="inner_seq")
    i = k3.Input((6, 6, 4))
    inner_fn = k3.Model(i, L.Add()([i, L.Conv2D(4, 3, padding="same")(i)]), name="inner_fn")
    inp = k3.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="stem")(inp)
    x = inner_seq(x)
    x = inner_fn(x)
    x = inner_fn(x)  # shared: the same weights called twice
    out = L.Dense(2)(L.Flatten()(x))
    model3 = _randomize(k3.Model(inp, out))
    t = keras3.to_tf_keras(model3)
    assert {"inner_seq", "inner_fn"} <= {layer.name for layer in t.model.layers}
    _assert_same(model3, t)


def test_merges_and_keras_ops_in_the_graph(k3):
    L, ops = k3.layers, k3.ops
    inp = k3.Input((4, 4, 3))
    a = L.Conv2D(6, 1, name="a")(inp)
    b = L.Conv2D(6, 1, name="b")(inp)
    # names no auto-named layer takes: Keras 3 names the `+` below "add" or "add_N" from a
    # process-wide counter, so an explicit "add" clashed or not by which tests ran first
    s = L.Add(name="sum_ab")([a, b])
    m = L.Multiply(name="prod_ab")([a, b])
    c = L.Concatenate(name="cat_abc")([s, m, L.Subtract(name="diff_ab")([a, b])])
    c = (c + 3.0) * 0.5 - 1.0          # keras.ops on symbolic tensors -> TFOpLambda
    c = ops.relu(c) + ops.sigmoid(c)   # unary ops -> Activation, tensor + tensor -> Add
    c = c * L.GlobalAveragePooling2D(keepdims=True)(c)  # broadcast: TFOpLambda(y=tensor)
    c = ops.gelu(1.0 - c)              # constant first; gelu's approximate=True default
    out = L.GlobalMaxPooling2D()(ops.softmax(c, axis=-1))
    model3 = _randomize(k3.Model(inp, out))
    t = keras3.to_tf_keras(model3)
    kinds = {type(layer).__name__ for layer in t.model.layers}
    assert {"Add", "Multiply", "Concatenate", "Subtract", "TFOpLambda"} <= kinds
    _assert_same(model3, t)


def _image_misc(k3, L):
    inp = k3.Input((6, 6, 3))
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same")(inp)
    x = L.UpSampling2D()(L.ZeroPadding2D(1)(x))
    x = L.PReLU()(L.Cropping2D(2)(L.Resizing(14, 14)(x)))
    x = L.GroupNormalization(2)(L.Identity()(x))
    return inp, L.Permute((2, 1))(L.Reshape((100, 4))(x))


def _sequence(k3, L):
    inp = k3.Input((10,), dtype="int32")
    x = L.LayerNormalization()(L.Conv1D(8, 3, padding="same")(L.Embedding(2, 8)(inp)))
    x = L.MultiHeadAttention(2, 4)(x, x)  # two positional tensors -> tf_keras kwargs
    return inp, L.Dense(2)(L.LSTM(5)(L.GRU(6, return_sequences=True)(x)))


@pytest.mark.parametrize("build", [_image_misc, _sequence], ids=["image-misc", "sequence"])
def test_other_builtin_layers(k3, build):
    inp, out = build(k3, k3.layers)
    model3 = _randomize(k3.Model(inp, out))
    t = keras3.to_tf_keras(model3)
    assert t.max_abs_diff <= ATOL * max(1.0, t.output_scale) and t.max_layer_rel_diff <= ATOL
    assert t.model.count_params() == model3.count_params()
    x = np.random.default_rng(5).integers(0, 2, (3, 10)) if build is _sequence else (
        np.random.default_rng(5).normal(0, 1, (3, 6, 6, 3)).astype("float32"))
    np.testing.assert_allclose(t.model(x).numpy(), np.asarray(model3(x)), rtol=0, atol=ATOL)


def test_application_private_layers(k3):
    """ConvNeXt's LayerScale/StochasticDepth and InceptionResNetV2's CustomScaleLayer are
    unregistered classes in both versions; they become plain tf_keras layers (LayerScale in a
    nested model too, so the weight transform follows the model it lives in)."""
    import importlib

    convnext = importlib.import_module("keras.src.applications.convnext")
    irv2 = importlib.import_module("keras.src.applications.inception_resnet_v2")
    L = k3.layers
    i = k3.Input((4, 4, 6))
    inner = k3.Model(i, convnext.LayerScale(1e-2, 6, name="ls_inner")(i), name="inner")
    inp = k3.Input((4, 4, 6))
    x = convnext.LayerScale(0.5, 6, name="ls")(L.Conv2D(6, 1)(inp))
    x = convnext.StochasticDepth(0.3, name="drop_path")(inner(x))
    out = irv2.CustomScaleLayer(0.17, name="scale")([inp, x])
    model3 = _randomize(k3.Model(inp, out))
    t = keras3.to_tf_keras(model3)
    assert type(t.model.get_layer("ls")).__name__ == "DepthwiseConv2D"
    assert any("StochasticDepth" in n for n in t.notes)
    _assert_same(model3, t)


def test_rescaling_and_normalization(k3):
    L = k3.layers
    inp = k3.Input((5, 5, 3))
    x = L.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
    x = L.Normalization(mean=[0.1, -0.2, 0.3], variance=[2.0, 0.5, 1.5])(x)
    adapted = L.Normalization(axis=-1, name="adapted")
    adapted.adapt(np.random.default_rng(3).normal(4.0, 3.0, (64, 5, 5, 3)).astype("float32"))
    x = adapted(x)
    out = L.Conv2D(2, 1)(x)
    model3 = k3.Model(inp, out)
    t = keras3.to_tf_keras(model3)
    np.testing.assert_allclose(t.model.get_layer("adapted").get_weights()[0],
                               adapted.get_weights()[0])
    _assert_same(model3, t)


ACTIVATIONS = ["linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "elu", "selu",
               "softplus", "softsign", "exponential", "gelu", "mish", "silu", "leaky_relu",
               "log_softmax", "hard_sigmoid", "hard_silu", "hard_swish"]


@pytest.mark.parametrize("form", ["Activation layer", "Dense(activation=...)"])
def test_activations_by_name(k3, form):
    """Every name in one model: each branch is compared on its own by the per-layer check.
    hard_sigmoid matters most: tf_keras' is clip(0.2x + 0.5), Keras 3's relu6(x + 3) / 6."""
    L = k3.layers
    inp = k3.Input((6,))
    h = L.Dense(6, name="pre")(inp)
    outs = [L.Activation(a, name=f"act_{a}")(h) if form == "Activation layer"
            else L.Dense(4, activation=a, name=f"dense_{a}")(h) for a in ACTIVATIONS]
    model3 = _randomize(k3.Model(inp, L.Concatenate()(outs)))
    t = keras3.to_tf_keras(model3)
    _assert_same(model3, t)
    if form == "Activation layer":
        assert any("hard_silu" in n for n in t.notes)


def test_hard_sigmoid_differs_between_the_versions(k3, tfk):
    """Why a same-name translation would be wrong: tf_keras clip(0.2x + 0.5) vs Keras 3
    relu6(x + 3) / 6 (0.7 vs 0.667 at x = 1)."""
    x = np.array([-2.0, 1.0, 2.0], "float32")
    k3_y = np.asarray(k3.activations.hard_sigmoid(x))
    np.testing.assert_allclose(k3_y, np.clip(x + 3, 0, 6) / 6, atol=1e-7)
    tf_y = tfk.activations.hard_sigmoid(keras_env.load().tf.constant(x)).numpy()
    assert np.max(np.abs(tf_y - k3_y)) > 0.03


def test_sequential_with_an_expanded_activation_becomes_functional(k3):
    model3 = _randomize(k3.Sequential([k3.Input((4,)), k3.layers.Dense(3, activation="hard_silu")]))
    t = keras3.to_tf_keras(model3)
    assert type(t.model).__name__ == "Functional"
    assert any("rebuilt as a Functional" in n for n in t.notes)
    _assert_same(model3, t)


def test_translated_model_is_plain_serializable_tf_keras(k3, tfk, tmp_path):
    """The expansions (TFOpLambda, ReLU, Multiply) reload with tf_keras safe_mode, no custom
    objects; output equal after reload."""
    L = k3.layers
    inp = k3.Input((6,))
    out = L.Activation("hard_silu")(L.Dense(4, activation="hard_sigmoid")(inp))
    t = keras3.to_tf_keras(_randomize(k3.Model(inp, out)))
    path = tmp_path / "translated.keras"
    t.model.save(path)
    again = tfk.models.load_model(path, compile=False, safe_mode=True)
    x = np.random.default_rng(0).normal(0, 3, (4, 6)).astype("float32")
    np.testing.assert_array_equal(again(x).numpy(), t.model(x).numpy())


@pytest.mark.slow
@pytest.mark.parametrize("name,size,kwargs", [("MobileNetV2", 32, {"alpha": 0.35}),
                                              ("MobileNetV3Small", 32, {"alpha": 0.75})])
def test_real_application_from_a_keras3_file(k3, tmp_path, name, size, kwargs):
    k3.utils.set_random_seed(0)
    model3 = getattr(k3.applications, name)(weights=None, input_shape=(size, size, 3),
                                            **kwargs)
    path = tmp_path / f"{name}.keras"
    model3.save(path)
    t = keras3.translate_keras3_file(path, seed=0)
    _assert_same(model3, t)


def test_translated_separable_conv_model_annotates(k3, tfk):
    # Keras 3 auto-names layers as tf_keras does (conv2d, conv2d_1, ...) but the translated
    # model is built from its config, which does not advance tf_keras' name counter; tfmot's
    # SeparableConv2D split then created a second "conv2d" (Keras 3 Xception hung in
    # quantize_apply). The Keras 3 conv takes the name tf_keras would give next.
    from pipeline.stages import annotate

    taken = next_auto_name(tfk, "Conv2D")
    L = k3.layers
    inp = k3.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name=taken)(inp)
    x = L.SeparableConv2D(8, 3, padding="same", use_bias=False)(x)
    x = L.ReLU()(L.BatchNormalization()(x))
    model3 = _randomize(k3.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(x))))
    t = keras3.to_tf_keras(model3)
    _assert_same(model3, t)
    qat, _ = annotate.apply(t.model)
    names = [layer.name for layer in qat.layers]
    assert len(names) == len(set(names)) and f"quant_{taken}" in names, names


# ---- errors ------------------------------------------------------------------------------


def _custom_layer_class(k3):
    @k3.saving.register_keras_serializable(package="qat_tests")
    class Doubler(k3.layers.Layer):
        def call(self, x):
            return x * 2.0

    return Doubler


def test_custom_layer_is_named_with_its_class(k3, tmp_path):
    doubler = _custom_layer_class(k3)
    inp = k3.Input((3,))
    model3 = k3.Model(inp, k3.layers.Dense(2)(doubler(name="twice")(inp)))
    path = tmp_path / "custom.keras"
    model3.save(path)
    for attempt in (lambda: keras3.to_tf_keras(model3),
                    lambda: keras3.translate_keras3_file(path)):
        with pytest.raises(ModelFileError) as err:
            attempt()
        msg = str(err.value)
        assert "'twice' (Doubler)" in msg and "tf_keras_objects" in msg and "\n" not in msg


def test_custom_layer_with_a_tf_keras_equivalent_and_a_wrong_one(k3, tfk):
    doubler = _custom_layer_class(k3)
    inp = k3.Input((3,))
    model3 = _randomize(k3.Model(inp, k3.layers.Dense(2, name="d")(doubler(name="twice")(inp))))

    class Doubler2(tfk.layers.Layer):
        def call(self, x):
            return x * 2.0

    class Tripler2(tfk.layers.Layer):
        def call(self, x):
            return x * 3.0

    t = keras3.to_tf_keras(model3, tf_keras_objects={"Doubler": Doubler2})
    _assert_same(model3, t)
    with pytest.raises(ModelFileError) as err:  # the output check finds the layer that differs
        keras3.to_tf_keras(model3, tf_keras_objects={"Doubler": Tripler2})
    assert "first differing layer 'twice' (Doubler)" in str(err.value)


def test_output_check_names_the_first_differing_layer(k3):
    model3 = _convnet(k3)
    t = keras3.to_tf_keras(model3)
    dw = t.model.get_layer("dw")
    dw.set_weights([w * 1.01 for w in dw.get_weights()])  # a 1 % error in one layer
    with pytest.raises(ModelFileError) as err:
        keras3.compare_outputs(model3, t.model)
    assert "first differing layer 'dw' (DepthwiseConv2D)" in str(err.value)


def test_weight_shape_mismatch_names_the_layer(k3, tfk):
    doubler = _custom_layer_class(k3)

    @k3.saving.register_keras_serializable(package="qat_tests")
    class Scale(k3.layers.Layer):
        def build(self, shape):
            self.g = self.add_weight(shape=(shape[-1],), name="g")

        def call(self, x):
            return x * self.g

    class Scale2(tfk.layers.Layer):
        def build(self, shape):
            self.g = self.add_weight(shape=(shape[-1] + 1,), name="g")

    inp = k3.Input((3,))
    model3 = k3.Model(inp, Scale(name="scale")(doubler()(inp)))
    with pytest.raises(ModelFileError) as err:
        keras3.to_tf_keras(model3, tf_keras_objects={"Scale": Scale2, "Doubler": Scale2})
    assert "layer 'scale' (Scale) weight g: Keras 3 (3,), tf_keras (4,)" in str(err.value)


@pytest.mark.parametrize("build,expected", [
    (lambda k3, x: k3.layers.Activation("hard_tanh", name="act")(x),
     "activation 'hard_tanh' has no tf_keras equivalent. Received: layer 'act' (Activation)"),
    (lambda k3, x: k3.layers.Dense(2, lora_rank=2, name="lora")(x),
     "argument lora_rank=2 has no tf_keras Dense equivalent. Received: layer 'lora' (Dense)"),
    (lambda k3, x: k3.ops.reshape(x, (-1, 2, 2)),
     "keras.ops.reshape with these arguments has no tf_keras layer equivalent"),
])
def test_untranslatable_arguments_and_ops(k3, build, expected):
    inp = k3.Input((4,))
    with pytest.raises(ModelFileError) as err:
        keras3.to_tf_keras(k3.Model(inp, build(k3, inp)))
    assert expected in str(err.value)


def test_subclassed_model_gets_the_rebuild_advice(k3):
    class Net(k3.Model):
        def __init__(self):
            super().__init__()
            self.d = k3.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(ModelFileError) as err:
        keras3.to_tf_keras(net)
    msg = str(err.value)
    assert "Subclassed Keras 3 models cannot be translated" in msg and "Net" in msg
    assert "Functional API" in msg


def test_lambda_in_a_keras3_file_is_refused_without_running(k3, tmp_path):
    marker = tmp_path / "ran.txt"
    target = str(marker)  # a closure value Keras 3 can serialize with the bytecode
    inp = k3.Input((2,))
    out = k3.layers.Lambda(lambda x: (open(target, "w").write("ran"), x)[1], name="evil")(inp)
    model3 = k3.Model(inp, out)
    marker.unlink()  # building the model traced the function once: it really runs
    path = tmp_path / "evil.keras"
    model3.save(path)
    assert b"Lambda" in zipfile.ZipFile(path).read("config.json")
    with pytest.raises(ModelFileError) as err:
        keras3.read_keras3_file(path)
    assert "Lambda layer(s) or Python lambdas (evil)" in str(err.value)
    with pytest.raises(ModelFileError):
        keras3.translate_keras3_file(path)
    assert not marker.exists()


def test_files_not_written_by_keras3_are_refused(k3, tfk, tmp_path):
    m2 = tfk.Sequential([tfk.Input((3,)), tfk.layers.Dense(2)])
    path = tmp_path / "k2.keras"
    m2.save(path)
    assert not keras3.is_keras3_file(path) and not keras3.is_keras3_model(m2)
    with pytest.raises(ModelFileError) as err:
        keras3.read_keras3_file(path)
    assert "not a .keras archive saved by Keras 3" in str(err.value)
    junk = tmp_path / "junk.keras"
    junk.write_text("not a zip")
    assert keras3.keras3_file_version(junk) is None
    with pytest.raises(ModelFileError):
        keras3.to_tf_keras(m2)


def test_keras3_file_metadata_is_what_is_detected(k3, tmp_path):
    inp = k3.Input((3,))
    path = tmp_path / "m.keras"
    k3.Model(inp, k3.layers.Dense(1)(inp)).save(path)
    meta = json.loads(zipfile.ZipFile(path).read("metadata.json"))
    assert keras3.keras3_file_version(path) == meta["keras_version"]


def test_load_keras3_rejects_keras2_with_the_fix(monkeypatch):
    real = keras_env.importlib.import_module

    class FakeKeras:
        __version__ = "2.15.0"

    monkeypatch.setattr(keras_env.importlib, "import_module",
                        lambda n: FakeKeras if n == "keras" else real(n))
    with pytest.raises(KerasEnvError) as err:
        keras_env.load_keras3()
    assert "keras==2.15.0" in str(err.value) and "pip install 'keras>=3'" in str(err.value)
