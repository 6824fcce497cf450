"""Task detection and target / input checks against the model (stages/targets.py, data.py)."""

import dataclasses

import numpy as np
import pytest

from pipeline.core.errors import ConfigError, DataError
from pipeline.stages import config, data, gates


def _ds(x, y_train, y_test=None, task="auto"):
    y_test = y_train if y_test is None else y_test
    xs = {k: data._check_inputs(v, k) for k, v in (("x_train", x), ("x_test", x))}
    from pipeline.stages import targets
    return data.Dataset("t", "test", xs["x_train"], targets.read(y_train, "y", task),
                        xs["x_test"], targets.read(y_test, "y", task))


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg and "Received:" in msg
    return msg


SEQ_IN = [("x", (None, 6, 3))]


@pytest.mark.parametrize("out_shape, y, want", [
    ((None, 6, 5), np.zeros((4, 6), int), "sequence"),
    ((None, 5), np.arange(4) % 5, "classification"),
    ((None, 5), np.eye(5)[np.arange(4)], "classification"),
    ((None, 1), np.array([0.5, 1.0, 2.0, 3.0]), "regression"),
    ((None, 1), np.array([0, 1, 2, 3]), "regression"),
    ((None, 2), np.random.default_rng(0).normal(size=(4, 2)), "regression"),
])
def test_the_task_follows_the_output_and_the_targets(out_shape, y, want):
    x = np.zeros((4, 6, 3), np.float32)
    ds = data.prepare(_ds(x, y), SEQ_IN, out_shape, "auto")
    assert ds.task == want
    if want == "sequence":
        assert ds.y_test.dtype == np.int64 and ds.y_test.shape == (4, 6)
        assert ds.summary()["task"] == "sequence" and ds.num_classes == 1
    if want == "classification":
        assert ds.y_test.shape == (4,) and "task" not in ds.summary()
    if want == "regression":
        assert ds.y_test.dtype == np.float32 and ds.y_test.shape == (4, out_shape[1])


def test_an_explicit_task_overrides_the_guess():
    x = np.zeros((4, 6, 3), np.float32)
    ds = data.prepare(_ds(x, np.arange(4.0)), SEQ_IN, (None, 1), "regression")
    assert ds.task == "regression"
    with pytest.raises(DataError) as err:
        data.prepare(_ds(x, np.arange(4)), SEQ_IN, (None, 1), "classification")
    assert "2 or more outputs" in _one_line(err) and "regression" in str(err.value)


@pytest.mark.parametrize("y, out_shape, words", [
    (np.zeros((4, 5), int), (None, 6, 5), "5 positions but the model outputs 6"),
    (np.full((4, 6), 9), (None, 6, 5), "go up to 9 but the model has 5 outputs per position"),
    (np.full((4, 6), -1), (None, 6, 5), "Every sequence target is padding (-1)"),
    (np.full((4, 6), -2), (None, 6, 5), ">= -1"),
    (np.zeros((4,), int), (None, 6, 5), "token ids (N, T)"),
])
def test_bad_sequence_targets_are_one_line_errors(y, out_shape, words):
    x = np.zeros((4, 6, 3), np.float32)
    with pytest.raises(DataError) as err:
        data.prepare(_ds(x, y), SEQ_IN, out_shape, "sequence")
    assert words in _one_line(err)


def test_padding_targets_are_kept_for_sequences_and_refused_for_classes():
    x = np.zeros((4, 6, 3), np.float32)
    y = np.zeros((4, 6), int)
    y[:, 4:] = -1  # the last two positions of every sequence are padding
    ds = data.prepare(_ds(x, y), SEQ_IN, (None, 6, 5), "sequence")
    assert (ds.y_test[:, 4:] == -1).all() and ds.task == "sequence"
    with pytest.raises(DataError) as err:
        data.prepare(_ds(x, np.array([0, 1, -1, 2])), SEQ_IN, (None, 5), "auto")
    assert ">= 0" in _one_line(err)


def test_several_inputs_are_matched_by_name(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train.tokens": rng.integers(0, 9, (10, 6)),
              "x_train.positions": np.tile(np.arange(6), (10, 1)),
              "x_test.tokens": rng.integers(0, 9, (4, 6)),
              "x_test.positions": np.tile(np.arange(6), (4, 1)),
              "y_train": rng.integers(0, 9, (10, 6)), "y_test": rng.integers(0, 9, (4, 6))}
    path = tmp_path / "two.npz"
    np.savez(path, **arrays)
    ds = data.load(path=str(path), task="auto")
    assert set(ds.x_train) == {"tokens", "positions"} and data.count(ds.x_test) == 4
    # the model lists its inputs in another order: names decide, not positions
    inputs = [("positions", (None, 6), "int32"), ("tokens", (None, 6), "int32")]
    ready = data.prepare(ds, inputs, (None, 6, 9), "auto")
    assert ready.task == "sequence"
    assert ready.x_test["tokens"].dtype == np.int32
    assert np.array_equal(ready.x_test["tokens"], arrays["x_test.tokens"])
    tr, ytr, va, yva = data.train_val_split(ready.x_train, ready.y_train, 0.2, seed=0)
    assert data.count(tr) == len(ytr) == 8 and data.count(va) == len(yva) == 2
    rep = data.representative_sample(ready.x_train, 3, seed=1)
    assert set(rep) == {"tokens", "positions"} and len(rep["tokens"]) == 3
    with pytest.raises(DataError) as err:
        data.prepare(ds, [("tokens", (None, 6), "int32"), ("mask", (None, 6), "int32")],
                     (None, 6, 9), "auto")
    msg = _one_line(err)
    assert "missing: mask" in msg and "unknown: positions" in msg and "mask (N, 6)" in msg
    with pytest.raises(DataError) as err:
        data.prepare(ds, [("tokens", (None, 7), "int32"), ("positions", (None, 6), "int32")],
                     (None, 6, 9), "auto")
    assert "input 'tokens' has shape (N, 6) but the model expects (N, 7)" in _one_line(err)
    single = data.Dataset("s", "s", np.zeros((2, 6), np.float32), np.zeros((2, 6), int),
                          np.zeros((2, 6), np.float32), np.zeros((2, 6), int))
    with pytest.raises(DataError) as err:
        data.prepare(single, inputs, (None, 6, 9), "auto")
    assert "2 inputs but the data holds one array" in _one_line(err)


def test_npz_with_both_forms_of_an_input_is_refused(tmp_path):
    path = tmp_path / "both.npz"
    z = np.zeros((3, 2))
    np.savez(path, x_train=z, **{"x_train.a": z}, x_test=z, y_train=np.zeros(3),
             y_test=np.zeros(3))
    with pytest.raises(DataError, match="both x_train and x_train.<input>"):
        data.load(path=str(path))


def test_unknown_task_and_gates_that_do_not_fit_are_config_errors():
    with pytest.raises(ConfigError) as err:
        config.load(None, {"data.task": "segmentation"})
    assert "data.task" in _one_line(err)
    g = config.load(None, {"gates.max_perplexity_increase_pct": 5}).gates
    gates.check_task(g, "sequence")
    with pytest.raises(ConfigError) as err:
        gates.check_task(g, "classification")
    assert "gates.max_perplexity_increase_pct does not apply to a classification" in \
        _one_line(err)
    with pytest.raises(ConfigError) as err:
        gates.check_task(dataclasses.replace(config.GatesConfig(), min_agreement=0.9),
                         "regression")
    assert "gates.min_agreement" in _one_line(err)
    gates.check_task(config.GatesConfig(), "regression")  # defaults always fit
