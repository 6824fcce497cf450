"""Several inputs fed by name: a two-input model (token ids + position ids through Embedding
layers, per-token logits) converted to float32 and int8 .tflite, then scored by the verify
stage (in process and in the isolated child), saved as a reference bundle and re-verified
with ``qat verify --reference``, and timed by ``android-harness host`` with random ids (inside
the Embedding tables) and with the bundle's inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from android_harness import cli as harness_cli
from android_harness.errors import InputDataError
from android_harness.inputs import load_inputs
from pipeline.cli.app import main, parse_args
from pipeline.core import keras_env
from pipeline.core.artifacts import RunDir
from pipeline.core.errors import DataError
from pipeline.stages import data, verify
from pipeline.tflite import feeding, reference
from pipeline.tflite.runtime import ModelRunner
from pipeline.tflite.tflite_model import TFLiteModel

pytestmark = pytest.mark.slow

V, T, N = 11, 8, 64


@pytest.fixture(scope="module")
def two_inputs(env, tmp_path_factory):
    tf, keras = env.tf, env.keras
    keras_env.set_seed(0)
    rng = np.random.default_rng(0)
    # the positions input is declared first: the .tflite's input order is its own
    pos = keras.Input((T,), dtype="int32", name="positions")
    tok = keras.Input((T,), dtype="int32", name="tokens")
    h = keras.layers.Add()([keras.layers.Embedding(V, 16)(tok),
                            keras.layers.Embedding(T, 16)(pos)])
    h = keras.layers.Dense(16, activation="relu")(h)
    model = keras.Model([pos, tok], keras.layers.Dense(V)(h))
    x = {"tokens": rng.integers(0, V, (N, T)).astype(np.int32),
         "positions": np.tile(np.arange(T, dtype=np.int32), (N, 1))}
    y = rng.integers(0, V, (N, T))

    def representative():
        for i in range(32):
            yield {k: v[i:i + 1] for k, v in x.items()}

    out = tmp_path_factory.mktemp("two")
    paths = {"float32": out / "float32.tflite", "qat_int8": out / "qat_int8.tflite"}
    paths["float32"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_output_type = tf.int8
    paths["qat_int8"].write_bytes(conv.convert())
    return model, x, y, paths


def test_inputs_are_matched_by_signature_name(two_inputs):
    _, x, _, paths = two_inputs
    view = TFLiteModel.from_file(paths["float32"])
    slots = feeding.slots_of_model(view)
    assert sorted(s.key for s in slots) == ["positions", "tokens"]
    runner = ModelRunner(paths["float32"])
    assert [s.name for s in runner.slots] == [s.name for s in slots]
    ordered = feeding.order(slots, x)  # dict order: tokens first; slot order: the model's
    for s, arr in zip(slots, ordered):
        assert arr is x[s.key]
    # Embedding tables bound the ids: V for tokens, T for positions
    bounds = feeding.id_bounds(view)
    assert {s.key: bounds[t.index] for s, t in zip(slots, view.inputs())} == \
        {"tokens": V, "positions": T}


def test_verify_feeds_by_name_in_process_and_isolated(two_inputs):
    model, x, y, paths = two_inputs
    task = verify.Task("sequence", True)
    ref = verify.score_keras("keras_float", model, x, y, task=task)
    swapped = {"positions": x["positions"], "tokens": x["tokens"]}
    f32 = verify.score_tflite("float32", paths["float32"].read_bytes(), swapped, y, task=task)
    assert np.abs(f32.outputs - ref.outputs).max() <= 1e-5 * max(1, np.abs(ref.outputs).max())
    assert f32.metrics["perplexity"] == pytest.approx(ref.metrics["perplexity"], rel=1e-5)
    i8 = verify.score_tflite("qat_int8", paths["qat_int8"].read_bytes(), x, y, task=task)
    iso = verify.score_tflite("qat_int8", paths["qat_int8"].read_bytes(), swapped, y,
                              task=task, isolate=True)
    assert np.array_equal(i8.outputs, iso.outputs)
    tok = verify.per_token(ref, i8)
    assert tok["tokens"] == N * T and tok["top1_agreement"] >= 0.99
    assert tok["top1_agreement"] == verify.compare(ref, i8).top1_agreement
    # each token's worst logit: the output's own rounding (0.5 LSB) plus the roundings of the
    # two Embedding tables, the Add and the hidden Dense carried through the last Dense
    # (measured: mean 0.94, max 1.75 LSB)
    assert tok["mean_token_max_error_lsb"] <= 2 and tok["max_token_error_lsb"] <= 4


@pytest.mark.parametrize("bad, words", [
    (lambda x: {"tokens": x["tokens"]}, "No data for model input positions (N, 8) int32"),
    (lambda x: {**x, "mask": x["tokens"]}, "No model input of"),
    (lambda x: {"tokens": x["tokens"][:, :5], "positions": x["positions"]},
     "Input tokens of"),
    (lambda x: x["tokens"], "has 2 inputs but 1 array"),
])
def test_bad_inputs_name_the_input_and_what_it_expects(two_inputs, bad, words):
    _, x, y, paths = two_inputs
    with pytest.raises(DataError) as err:
        ModelRunner(paths["float32"], source="float32.tflite").run(bad(x))
    msg = str(err.value)
    assert words in msg and "\n" not in msg and "Received:" in msg


def test_reference_bundle_of_a_two_input_model_verifies_again(two_inputs, tmp_path, capsys):
    _, x, y, paths = two_inputs
    rd = RunDir(tmp_path / "run", log=lambda *_: None)
    bundle = {}
    for name, path in paths.items():
        runner = ModelRunner(path)
        raw = runner.run(x, dequantize=False)
        bundle[name] = (path.read_bytes(), raw, float(np.mean(raw[0].argmax(-1) == y)),
                        [o.to_dict() for o in runner.outputs])
        rd.write_bytes(f"{name}.tflite", path.read_bytes())
    reference.save(rd, x, y, bundle, task="sequence")
    final = rd.commit()
    _, doc, xs, _ = reference.load(str(final))
    assert doc["task"] == "sequence" and set(xs) == {"tokens", "positions"}
    for name in paths:
        code = main(parse_args(["verify", f"{final}/{name}.tflite", "--reference", str(final),
                                "--json"]))
        got = json.loads(capsys.readouterr().out)["reference"]
        assert code == 0 and got["passed"] and got["exact_fraction"] == 1.0, got
        assert got["accuracy"] == pytest.approx(bundle[name][2])
    # a bundle that lost one input: a one-line error naming it, exit 2
    np.savez(final / "reference" / "inputs.npz", **{"x.tokens": x["tokens"], "y": y})
    code = main(parse_args(["verify", f"{final}/qat_int8.tflite", "--reference", str(final)]))
    err = capsys.readouterr().err
    assert code == 2 and "No data for model input positions (N, 8) int32" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_harness_host_feeds_each_input_by_name(two_inputs, tmp_path, capsys):
    _, x, y, paths = two_inputs
    fast = ["--cooldown", "0", "--min-seconds", "0.01", "--warmup-seconds", "0", "-q",
            "--repeats", "1"]
    npz = tmp_path / "inputs.npz"
    np.savez(npz, **{f"x_test.{k}": v for k, v in x.items()})
    for extra in ([], ["--inputs", str(npz)]):
        out = tmp_path / f"out{len(extra)}"
        code = harness_cli.main(harness_cli.parse_args(
            ["host", str(paths["qat_int8"]), *extra, "--out", str(out), *fast]))
        err = capsys.readouterr().err
        assert code == 0, err
        assert json.loads((out / "results.json").read_text())["results"][0]["status"] == "ok"
    loaded = {i.key: i for i in load_inputs(str(npz), paths["qat_int8"])}
    assert np.array_equal(loaded["tokens"].samples, x["tokens"])
    bad = tmp_path / "bad.npz"
    np.savez(bad, tokens=x["tokens"] + V, positions=x["positions"])
    with pytest.raises(InputDataError, match="Input tokens holds ids outside the table"):
        load_inputs(str(bad), paths["qat_int8"])
    with pytest.raises(InputDataError, match=r"missing positions \(N, 8\) int32"):
        np.savez(bad, tokens=x["tokens"])
        load_inputs(str(bad), paths["qat_int8"])


def test_dataset_with_named_inputs_scores_like_the_model(two_inputs):
    model, x, y, _ = two_inputs
    ds = data.Dataset("two", "mem", dict(x), y, dict(x), y)
    inputs = [(n, tuple(t.shape), t.dtype.name) for n, t in zip(model.input_names,
                                                                 model.inputs)]
    ready = data.prepare(ds, inputs, tuple(model.outputs[0].shape), "auto")
    assert ready.task == "sequence" and set(ready.x_test) == {"tokens", "positions"}


def test_a_two_output_model_is_scored_on_the_named_output(env, tmp_path):
    """data.output names the scored output; the other is compared by its output error."""
    tf, keras = env.tf, env.keras
    keras_env.set_seed(0)
    inp = keras.Input((4,), name="features")
    h = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(inp, [keras.layers.Dense(3, name="cls")(h),
                              keras.layers.Dense(1, name="aux")(h)])
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    x = np.random.default_rng(0).uniform(-1, 1, (20, 4)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(20, 1)).astype(np.float32)
    task = verify.Task("regression", True, "aux")
    ref = verify.score_keras("keras_float", model, x, y, task=task)
    got = verify.score_tflite("float32", content, x, y, task=task)
    assert got.outputs.shape == (20, 1) and set(got.others) == {"cls"}
    assert got.metrics["mse"] == pytest.approx(ref.metrics["mse"], rel=1e-5)
    (other,) = verify.compare_others(ref, got)
    assert other.candidate == "float32:cls" and other.max_abs_error <= 1e-5
    with pytest.raises(DataError, match="no output of that name"):
        verify.score_tflite("float32", content, x, y, task=verify.Task("regression", True,
                                                                          "nope"))


def test_qat_verify_data_with_named_inputs(two_inputs, tmp_path, capsys):
    """``qat verify --data`` on an .npz with x_test.<input> arrays: fed by name, scored as a
    sequence model (from the .tflite's (N, T, V) output and the (N, T) targets)."""
    model, x, y, paths = two_inputs
    npz = tmp_path / "two.npz"
    np.savez(npz, **{f"x_{s}.{k}": v for s in ("train", "test") for k, v in x.items()},
             y_train=y, y_test=y)
    code = main(parse_args(["verify", str(paths["float32"]), "--data", str(npz), "--json"]))
    doc = json.loads(capsys.readouterr().out)
    ref = verify.score_keras("keras_float", model, x, y, task=verify.Task("sequence", True))
    assert code == 0 and doc["task"] == "sequence" and doc["samples"] == N
    assert doc["metrics"]["perplexity"] == pytest.approx(ref.metrics["perplexity"], rel=1e-5)
    assert doc["accuracy"] == pytest.approx(ref.accuracy)
