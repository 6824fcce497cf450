"""The glyphs dataset (fonts over photographs) and MobileNetV3-Small on it (glyphs_mnv3)."""

import os

import numpy as np
import pytest

from models import DATASETS, MODELS, glyphs, recipe_path
from models.glyphs import CLASSES, INPUT_SHAPE, NUM_CLASSES


@pytest.fixture(scope="module")
def small():
    return glyphs.generate(2 * NUM_CLASSES + 5, NUM_CLASSES)


def test_registered_with_a_recipe():
    assert MODELS["glyphs_mnv3"].dataset == "glyphs" and "glyphs" in DATASETS
    assert recipe_path("glyphs_mnv3").is_file()
    assert NUM_CLASSES == 33 and not set("IOQ") & set(CLASSES)
    assert set(CLASSES) | set("IOQ") == set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def test_generation_is_deterministic_bit_for_bit(small):
    again, _ = glyphs.generate(2 * NUM_CLASSES + 5, NUM_CLASSES)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert again[k].tobytes() == small[0][k].tobytes(), k


def test_shapes_dtypes_ranges_and_balanced_labels(small):
    arrays, _ = small
    for split, n in (("train", 2 * NUM_CLASSES + 5), ("test", NUM_CLASSES)):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        assert x.shape == (n, *INPUT_SHAPE) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        counts = np.bincount(y, minlength=NUM_CLASSES)
        assert counts.max() - counts.min() <= 1 and len(counts) == NUM_CLASSES
        # real images: each uses a wide range of values, no two samples are the same
        assert np.median(x.reshape(n, -1).max(1).astype(int) - x.reshape(n, -1).min(1)) > 80
        assert len({s.tobytes() for s in x}) == n
    assert arrays["x_train"][:5].tobytes() != arrays["x_test"][:5].tobytes()


def test_train_and_test_backgrounds_come_from_disjoint_regions(monkeypatch):
    pil = glyphs._pil()
    photos = glyphs.load_photos(pil)
    for img, a, b in zip(photos.values(), glyphs.regions(photos, "train"),
                         glyphs.regions(photos, "test")):
        full, wa = np.asarray(img), a.size[0]
        assert wa + b.size[0] == img.size[0] and a.size[1] == b.size[1] == img.size[1]
        assert abs(wa - glyphs.SPLIT_AT * img.size[0]) <= 1
        np.testing.assert_array_equal(np.asarray(a), full[:, :wa])  # the left part
        np.testing.assert_array_equal(np.asarray(b), full[:, wa:])  # the rest
    # generate() takes each split's backgrounds from that split's regions only
    split_of, used = {}, []
    regions, background = glyphs.regions, glyphs._background

    def spy_regions(photos, split):
        out = regions(photos, split)
        split_of.update({id(r): (split, i) for i, r in enumerate(out)})
        return out

    monkeypatch.setattr(glyphs, "regions", spy_regions)
    monkeypatch.setattr(glyphs, "_background", lambda pil, rng, photo: used.append(
        split_of[id(photo)]) or background(pil, rng, photo))
    glyphs.generate(200, 100)
    assert [s for s, _ in used] == ["train"] * 200 + ["test"] * 100
    assert {i for _, i in used[:200]} == {i for _, i in used[200:]} == set(range(len(photos)))


def test_assets_exist_and_the_card_states_sources_and_licences(small):
    import matplotlib

    _, card = small
    root = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    assert all(os.path.isfile(os.path.join(root, f)) for f in card["fonts"])
    photos = card["assets"]["photos"]
    assert set(photos) == set(glyphs.PHOTOS) and all(p["licence"] for p in photos.values())
    assert card["splits"]["train"]["columns"] == [0.0, glyphs.SPLIT_AT]
    assert card["splits"]["test"]["columns"] == [glyphs.SPLIT_AT, 1.0]
    assert "disjoint" in card["splits"] and card["classes"] == list(CLASSES)
    assert {"DejaVu*", "STIX*", "cm*"} == set(card["assets"]["fonts"])


def test_cached_by_content_hash_with_preprocessing(tmp_path, monkeypatch):
    a = glyphs.load_dataset(cache_dir=tmp_path, train=40, test=36)
    monkeypatch.setattr(glyphs, "generate", lambda *a: pytest.fail("not read from the cache"))
    b = glyphs.load_dataset(cache_dir=tmp_path, train=40, test=36)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["card"] == b["card"] and a["card"]["sizes"] == {"x_train": 40, "x_test": 36}
    assert a["card"]["generator"]["asset_packages"].keys() == {"matplotlib", "scikit-image",
                                                               "pillow"}
    assert b["preprocessing"]["input_range"] == [0.0, 255.0]
    assert len(list(tmp_path.glob("glyphs-*.npz"))) == 1


def test_mobilenetv3_small_with_hard_swish_and_squeeze_excite(env):
    from models import glyphs_mnv3

    model = MODELS["glyphs_mnv3"].build(env.keras)
    assert tuple(model.input_shape) == (None, *INPUT_SHAPE)
    assert tuple(model.output_shape) == (None, NUM_CLASSES)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds[1] == "Rescaling"  # the phone feeds raw pixels
    symbols = {getattr(l, "symbol", None) for l in model.layers}
    assert {"__operators__.add", "math.multiply"} <= symbols  # hard-swish: x * relu6(x+3)/6
    se = [l for l in model.layers if l.name.endswith("squeeze_excite/AvgPool")]
    assert len(se) >= 9 and all(l.keepdims for l in se)
    assert sum(l.name.endswith("squeeze_excite/Mul") for l in model.layers) == len(se)
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits
    assert {l.momentum for l in model.layers if type(l).__name__ == "BatchNormalization"} \
        == {glyphs_mnv3.BN_MOMENTUM}


def test_every_batchnorm_folds_and_every_parameter_trains_quantized(env):
    from pipeline.keras.plan import LayerStatus
    from pipeline.stages import annotate

    _, cov = annotate.prepare(MODELS["glyphs_mnv3"].build(env.keras))
    by = {}
    for p in cov.layers:
        by.setdefault(p.cls, set()).add(p.status)
    assert by["BatchNormalization"] == {LayerStatus.FOLDED}
    assert by["Multiply"] == {LayerStatus.FALLBACK}  # hard-swish and squeeze-excite
    assert "TFOpLambda" not in by  # rewritten as Rescaling layers
    assert cov.to_dict()["params_quantized_share"] == 1.0


@pytest.mark.slow
def test_tiny_run_is_full_int8_and_agrees(tmp_path):
    """The whole pipeline on a slice: 300 train / 100 test, one float and one QAT epoch, the
    qat_int8 variant only (accuracy is not the point: full-int8 and agreement with Keras QAT
    are). ~2 min here, most of it TFLite's conversion of the QAT MobileNetV3."""
    import json

    from pipeline.cli.app import main, parse_args

    code = main(parse_args([
        "run", "glyphs_mnv3", "--output", str(tmp_path), "--quiet",
        "--set", "data.train_samples=300", "--set", "data.test_samples=100",
        "--set", "model.float_epochs=1", "--set", "qat.epochs=1",
        "--set", "gates.min_float_accuracy=0", "--set", "gates.max_accuracy_drop_pp=100",
        "--set", "convert.variants=qat_int8"]))
    report = json.loads((tmp_path / "glyphs_mnv3" / "report.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    assert code == 0, gates
    (qat,) = report["variants"]
    assert qat["variant"] == "qat_int8" and qat["full_int8"], qat["full_int8_reasons"]
    assert gates["min_agreement"]["value"] >= 0.99
    # raw RGB pixels in: int8 = pixel - 128, exactly (the Rescaling layer is inside the model)
    assert qat["input_quant"] == {"scale": 1.0, "zero_point": -128, "dtype": "int8"}
