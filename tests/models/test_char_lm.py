"""The stdlib_text dataset (CPython's library source as character windows) and char_lm."""

from __future__ import annotations

import numpy as np
import pytest

from models import DATASETS, MODELS, char_lm, char_lm_data as data, recipe_path
from pipeline.core.errors import DataError


@pytest.fixture(scope="module")
def corpus():
    return data.read_corpus()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return data.load_dataset(cache_dir=root, train=300, test=60), root


def test_registered_with_a_recipe_the_config_accepts():
    from pipeline.stages import config

    assert MODELS["char_lm"].dataset == "stdlib_text" == char_lm.DATASET
    assert "stdlib_text" in DATASETS and recipe_path("char_lm").is_file()
    cfg = config.load(recipe_path("char_lm"))
    assert cfg.model.name == "char_lm" and cfg.data.name == "stdlib_text"


def test_split_is_by_file_deterministic_and_about_a_tenth(corpus):
    splits, stats = corpus
    train = {rel for rel, _ in splits["train"]}
    test = {rel for rel, _ in splits["test"]}
    assert not train & test and train | test == set(data.source_files())
    assert all(data.is_test_file(r) for r in test) and not any(map(data.is_test_file, train))
    assert 0.05 < len(test) / (len(train) + len(test)) < 0.2
    assert not any(set(r.split("/")[:-1]) & set(data.EXCLUDED_DIRS) for r in train | test)
    assert data.read_corpus()[1] == stats  # same files, same bytes


def test_encode_decode_and_the_id_table():
    text = "def f(x):\n\treturn x + 1  # ~\u00e9"
    ids = data.encode(text)
    assert len(data.VOCAB_TABLE) == data.VOCAB == 98 and ids.max() < data.VOCAB
    assert [int(i) for i in data.encode(" ~\t\n")] == [3, 97, 1, 2]
    assert ids[-1] == data.OTHER and data.decode(ids) == text[:-1] + "\ufffd"
    assert all(data.VOCAB_TABLE[i] == chr(i + 29) for i in range(3, 98))


def test_windows_are_next_character_targets():
    ids = data.encode("abcdefghij" * 20)
    x, y = data.windows(ids)
    assert x.shape == y.shape == ((len(ids) - data.WINDOW - 1) // data.STRIDE + 1, data.WINDOW)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(x[1], ids[data.STRIDE:data.STRIDE + data.WINDOW])
    assert data.windows(ids[:data.WINDOW])[0].shape == (0, data.WINDOW)


def test_loaded_windows_are_text_of_their_own_split(small, corpus):
    ds, _ = small
    splits, _ = corpus
    streams = {s: "".join(t for _, t in splits[s]) for s in ("train", "test")}
    for split, n in (("train", 300), ("test", 60)):
        x, y = ds[f"x_{split}"], ds[f"y_{split}"]
        assert set(x) == {"tokens", "positions"}
        assert x["tokens"].shape == y.shape == x["positions"].shape == (n, data.WINDOW)
        assert x["tokens"].dtype == y.dtype == x["positions"].dtype == np.int32
        np.testing.assert_array_equal(x["positions"], np.tile(np.arange(data.WINDOW), (n, 1)))
        np.testing.assert_array_equal(x["tokens"][:, 1:], y[:, :-1])
        for row, last in zip(x["tokens"][:20], y[:20, -1]):
            text = data.decode(np.append(row, last))
            if "\ufffd" in text:
                continue
            assert text in streams[split]
    assert ds["preprocessing"]["vocab"] == data.VOCAB_TABLE


def test_cached_with_a_card(small):
    ds, root = small
    card = ds["card"]
    assert card["python"] and card["licence"].startswith("Python Software Foundation")
    assert card["sizes"] == {"x_train": 300, "x_test": 60}
    s = card["splits"]
    assert s["train"]["files"] > 5 * s["test"]["files"] > 0
    assert s["train"]["bytes"] > s["train"]["characters"] * 0.99 > 0
    assert len(s["test_files"]) == s["test"]["files"]
    assert len(list(root.glob("stdlib_text-*.npz"))) == 1
    again = data.load_dataset(cache_dir=root, train=300, test=60)
    np.testing.assert_array_equal(again["x_train"]["tokens"], ds["x_train"]["tokens"])
    assert again["card"] == card


def test_asking_for_more_windows_than_exist_says_how_many_there_are(tmp_path):
    with pytest.raises(DataError, match="available"):
        data.load_dataset(cache_dir=tmp_path, train=10, test=10 ** 7)


def test_model_is_a_causal_transformer_of_standard_layers(env):
    keras = env.keras
    model = char_lm.build(keras)
    assert 0.5e6 <= model.count_params() <= 2e6
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds == {"InputLayer", "Embedding", "Add", "LayerNormalization",
                     "MultiHeadAttention", "Dense"}
    assert [t.name for t in model.inputs] == ["tokens", "positions"]
    tiny = char_lm.build(keras, window=8, vocab=12, d=16, heads=2, blocks=2, ff=32)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 12, (2, 8)).astype("int32")
    pos = np.tile(np.arange(8, dtype="int32"), (2, 1))
    y = tiny([tokens, pos]).numpy()
    assert y.shape == (2, 8, 12)
    changed = tokens.copy()
    changed[:, 5] = (changed[:, 5] + 1) % 12
    y2 = tiny([changed, pos]).numpy()
    np.testing.assert_array_equal(y2[:, :5], y[:, :5])  # causal: the past does not move
    assert np.abs(y2[:, 5:] - y[:, 5:]).max() > 1e-4


def test_qat_run_on_a_slice_is_full_int8_scored_per_token_and_writes_text(lm_run):
    """`qat run char_lm` on a slice (the session's lm_run): both int8 variants full-int8,
    perplexity for every variant, PTQ made from the attention-rewritten float graph, layer
    parity over the attention's inner tensors, and text written by each .tflite."""
    import json

    code, run = lm_run
    report = json.loads((run / "report.json").read_text())
    assert code == 0, report["gates"]
    rows = {r["model"]: r for r in report["task_metrics"]["rows"]}
    assert {"keras_float", "keras_qat", "float32", "ptq_int8", "qat_int8"} <= set(rows)
    for name in ("ptq_int8", "qat_int8"):
        assert rows[name]["full_int8"] is True
        lo, hi = rows[name]["perplexity_ci95"]
        assert lo <= rows[name]["perplexity"] <= hi and rows[name]["tokens"] == 40 * 64
    assert report["ptq_calibration"]["converted_from"] == "the attention-rewritten float graph"
    compared = {r["layer"] for r in report["layer_parity"]["layers"] if r["status"] == "compared"}
    assert any("softmax" in n for n in compared) and any("scores" in n for n in compared)
    assert report["layer_parity"]["first_divergent"] is None
    samples = report["text_samples"]
    assert {(s["variant"], s["decoding"] == "greedy") for s in samples} == {
        (v, g) for v in ("float32", "qat_int8", "ptq_int8") for g in (True, False)}
    assert all(s["tokens"] == 120 and s["prompt"] == samples[0]["prompt"] for s in samples)
    md = (run / "report.md").read_text()
    assert "## Text written by the .tflite files" in md
    assert samples[0]["text"].split("\n")[0][:20] in md
