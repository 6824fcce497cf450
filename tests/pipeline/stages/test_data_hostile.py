"""Hostile .npz files: special files, forged .npy headers, truncated arrays, size limits."""

import io
import os
import zipfile

import numpy as np
import pytest

from pipeline.stages import data

from pipeline.core import files
from pipeline.core.errors import DataError, QatError

rng = np.random.default_rng(0)
GOOD = {"x_train": rng.random((20, 4), dtype=np.float32), "y_train": np.arange(20) % 2,
        "x_test": rng.random((6, 4), dtype=np.float32), "y_test": np.arange(6) % 2}


def _npy(array=None, *, header=None, body=b""):
    """.npy bytes: a real array, or a forged header dict with the given body."""
    buf = io.BytesIO()
    if header is None:
        np.lib.format.write_array(buf, array, allow_pickle=False)
        return buf.getvalue()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + body


def _zip(path, members: dict, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compress) as z:
        for name, blob in members.items():
            z.writestr(name + ".npy", blob)
    return str(path)


def _with(path, **override):
    members = {k: _npy(v) for k, v in GOOD.items()}
    members.update(override)
    return _zip(path, members)


def test_header_claiming_terabytes_is_refused_without_allocating(tmp_path):
    forged = _npy(header={"descr": "<f4", "fortran_order": False,
                          "shape": (10 ** 12, 8, 8, 1)}, body=b"\0" * 64)
    with pytest.raises(DataError) as exc:
        data.load(path=_with(tmp_path / "d.npz", x_train=forged))
    msg = str(exc.value)
    assert "truncated" in msg and "x_train" in msg and "256,000,000,000,000 bytes" in msg
    assert "object arrays" not in msg


def test_truncated_array_says_truncated(tmp_path):
    whole = _npy(GOOD["x_test"])
    with pytest.raises(DataError) as exc:
        data.load(path=_with(tmp_path / "d.npz", x_test=whole[:-10]))
    msg = str(exc.value)
    assert "is truncated" in msg and "d.npz:x_test" in msg
    assert "needs 96 bytes, the member holds 86" in msg
    assert "object arrays" not in msg and "pickle" not in msg


def test_forged_object_header_is_refused_without_unpickling(tmp_path):
    forged = _npy(header={"descr": "|O", "fortran_order": False, "shape": (20,)},
                  body=b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(DataError) as exc:
        data.load(path=_with(tmp_path / "d.npz", x_train=forged))
    assert "object arrays, which need pickle" in str(exc.value)
    assert "d.npz:x_train (dtype object)" in str(exc.value)


@pytest.mark.parametrize("blob, fragment", [
    (b"not an npy at all", "no valid .npy header"),
    (b"\x93NUMPY\x09\x00" + b"\0" * 16, "no valid .npy header"),  # unknown version
    (b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n", "no valid .npy header"),
])
def test_garbage_npy_member_is_a_data_error(tmp_path, blob, fragment):
    with pytest.raises(DataError, match=fragment):
        data.load(path=_with(tmp_path / "d.npz", y_test=blob))


def test_data_path_that_is_a_character_device():
    with pytest.raises(DataError) as exc:
        data.load(path="/dev/zero")
    assert "data file is a character device, not a regular file" in str(exc.value)
    assert "does not exist" not in str(exc.value)


def test_data_path_that_is_a_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "d.npz"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="named pipe \\(FIFO\\), not a regular file"):
        data.load(path=str(fifo))


def test_data_limit_is_configurable_and_checked_before_reading(tmp_path, monkeypatch):
    path = _with(tmp_path / "d.npz")
    monkeypatch.setenv(files.ENV_LIMIT, "100")
    with pytest.raises(DataError) as exc:
        data.load(path=path)
    assert "larger than the 100 bytes limit for data files" in str(exc.value)
    assert files.ENV_LIMIT in str(exc.value)
    monkeypatch.setenv(files.ENV_LIMIT, str(10 ** 6))
    assert len(data.load(path=path).x_train) == 20  # within the raised limit
    monkeypatch.setenv(files.ENV_LIMIT, "lots")
    with pytest.raises(QatError, match="QAT_MAX_INPUT_BYTES must be a positive whole number"):
        data.load(path=path)


def test_compressed_members_expanding_past_the_limit(tmp_path, monkeypatch):
    big = np.zeros((4096, 4), np.float32)  # 64 KiB that deflates to almost nothing
    members = {k: _npy(v) for k, v in GOOD.items()}
    members["x_train"] = _npy(big)
    path = _zip(tmp_path / "d.npz", members, zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 16_000
    monkeypatch.setenv(files.ENV_LIMIT, "32000")
    with pytest.raises(DataError, match="data file expands to more than"):
        data.load(path=path)


def test_valid_compressed_npz_still_loads(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, **GOOD)
    ds = data.load(path=str(path))
    np.testing.assert_array_equal(ds.x_test, GOOD["x_test"])
