import numpy as np
import pytest

from pipeline.stages import data
from pipeline.core.errors import DataError

SHAPE = (None, 8, 8, 1)


def _npz(tmp_path, **arrays):
    rng = np.random.default_rng(0)
    base = {"x_train": rng.random((20, 8, 8, 1), dtype=np.float32),
            "y_train": np.arange(20) % 10,
            "x_test": rng.random((10, 8, 8, 1), dtype=np.float32),
            "y_test": np.arange(10) % 10}
    base.update(arrays)
    base = {k: v for k, v in base.items() if v is not None}
    path = tmp_path / "d.npz"
    np.savez(path, **base)
    return str(path)


def test_zoo_digits_is_real_and_split_stratified():
    ds = data.load(name="digits")
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.num_classes == 10
    # stratified: every class' share of the test split within 1 sample of 25 %
    for c in range(10):
        n = np.sum(ds.y_train == c) + np.sum(ds.y_test == c)
        assert abs(np.sum(ds.y_test == c) - 0.25 * n) <= 1


def test_npz_round_trip_and_one_hot_labels(tmp_path):
    eye = np.eye(10, dtype=np.float32)
    path = _npz(tmp_path, y_train=eye[np.arange(20) % 10], y_test=(np.arange(10) % 10)[:, None])
    ds = data.load(path=path)
    assert ds.y_train.tolist() == (np.arange(20) % 10).tolist()
    assert ds.y_test.dtype == np.int64 and ds.y_test.shape == (10,)
    data.validate(ds, SHAPE, 10)


@pytest.mark.parametrize("arrays, fragment", [
    ({"x_train": np.zeros((0, 8, 8, 1), np.float32), "y_train": np.zeros(0, int)},
     "The train split is empty"),
    ({"y_test": None}, "missing arrays"),
    ({"y_train": np.arange(19)}, "differ in length"),
    ({"y_train": np.full(20, 0.5)}, "whole class ids"),
    ({"y_train": -(np.arange(20) % 10)}, "Labels must be >= 0"),
    ({"x_train": np.array(["a"] * 20).reshape(20, 1)}, "must be numeric"),
    ({"y_train": np.ones((20, 10))}, "one-hot"),
])
def test_bad_npz_contents(tmp_path, arrays, fragment):
    with pytest.raises(DataError) as err:
        data.load(path=_npz(tmp_path, **arrays))
    assert fragment in str(err.value)
    assert "Received:" in str(err.value) and "\n" not in str(err.value)


def test_nan_is_found_with_its_sample(tmp_path):
    x = np.zeros((20, 8, 8, 1), np.float32)
    x[7, 3, 3, 0] = np.nan
    x[9, 0, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"2 values, first in sample 7"):
        data.load(path=_npz(tmp_path, x_train=x))


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    obj = np.empty(20, dtype=object)
    np.savez(path, x_train=obj, y_train=np.arange(20), x_test=obj, y_test=np.arange(20))
    with pytest.raises(DataError, match="object arrays"):
        data.load(path=str(path))


@pytest.mark.parametrize("make, fragment", [
    (lambda p: str(p / "missing.npz"), "does not exist"),
    (lambda p: str(p), "is a directory"),
    (lambda p: [(p / "t.npz").write_text("not a zip"), str(p / "t.npz")][1],
     "not a readable .npz"),
])
def test_bad_data_files(tmp_path, make, fragment):
    with pytest.raises(DataError, match=fragment):
        data.load(path=make(tmp_path))


def test_validate_shape_and_label_range(tmp_path):
    ds = data.load(path=_npz(tmp_path, x_train=np.zeros((20, 8, 8), np.float32),
                             x_test=np.zeros((10, 8, 8), np.float32)))
    with pytest.raises(DataError) as err:
        data.validate(ds, SHAPE, 10)
    msg = str(err.value)
    assert "Input data has shape (N, 8, 8) but the model expects (N, 8, 8, 1)" in msg
    assert "x[..., None]" in msg
    ok = data.load(path=_npz(tmp_path))
    with pytest.raises(DataError, match="Labels go up to 9 but the model has 5 outputs"):
        data.validate(ok, SHAPE, 5)
    with pytest.raises(DataError, match="2 or more outputs"):
        data.validate(ok, SHAPE, 1)


def test_train_val_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(5), 40)
    x = np.arange(len(y), dtype=np.float32)[:, None]
    a = data.train_val_split(x, y, 0.1, seed=3)
    b = data.train_val_split(x, y, 0.1, seed=3)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    x_tr, y_tr, x_val, y_val = a
    assert len(x_val) == 20 and np.bincount(y_val).tolist() == [4] * 5
    assert not set(x_tr[:, 0]) & set(x_val[:, 0])
