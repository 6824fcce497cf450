import json

import numpy as np
import pytest

from models import datacache
from pipeline.core.errors import DataError


def _gen(calls, n=5):
    def generate():
        calls.append(n)
        rng = np.random.default_rng(n)
        x = rng.random((n, 2, 2, 1), dtype=np.float32)
        return ({"x_train": x, "y_train": np.arange(n) % 2, "x_test": x[:2],
                 "y_test": np.array([0, 1])}, {"source": "test", "licence": "n/a"})
    return generate


def test_generated_once_then_read_back(tmp_path):
    calls = []
    a, card = datacache.cached("toy", 1, {"n": 5}, ["numpy"], _gen(calls), root=tmp_path)
    b, card2 = datacache.cached("toy", 1, {"n": 5}, ["numpy"], _gen(calls), root=tmp_path)
    assert calls == [5]  # the second call read the cache
    for k in datacache.ARRAYS:
        np.testing.assert_array_equal(a[k], b[k])
    assert card == card2 and card["sizes"] == {"x_train": 5, "x_test": 2}
    assert card["generator"]["asset_packages"]["numpy"] == np.__version__
    files = sorted(p.name for p in tmp_path.iterdir())
    h = card["generator"]["hash"]
    assert files == [f"toy-{h}.card.json", f"toy-{h}.npz"]
    assert json.loads((tmp_path / f"toy-{h}.card.json").read_text()) == card


def test_new_parameters_or_version_make_a_new_file(tmp_path):
    calls = []
    datacache.cached("toy", 1, {"n": 5}, ["numpy"], _gen(calls), root=tmp_path)
    datacache.cached("toy", 1, {"n": 6}, ["numpy"], _gen(calls, 6), root=tmp_path)
    datacache.cached("toy", 2, {"n": 5}, ["numpy"], _gen(calls), root=tmp_path)
    assert calls == [5, 6, 5]
    assert len(list(tmp_path.glob("toy-*.npz"))) == 3


def test_missing_asset_package_names_the_extra(tmp_path):
    with pytest.raises(DataError, match=r"qat-deploy\[zoo\]") as e:
        datacache.cached("toy", 1, {}, ["no-such-dist-xyz"], _gen([]), root=tmp_path)
    assert "no-such-dist-xyz" in str(e.value) and not list(tmp_path.iterdir())


def test_digits_slices_keep_the_split_order():
    from models import digits_cnn
    full = digits_cnn.load_dataset()
    part = digits_cnn.load_dataset(train=100, test=30)
    assert len(part["x_train"]) == 100 and len(part["x_test"]) == 30
    np.testing.assert_array_equal(part["x_train"], full["x_train"][:100])
