"""Standalone verification against the reference bundle, without TensorFlow."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests import tflite_craft as craft

slow = pytest.mark.slow  # the tests that need the demo run

# Runs the CLI with TensorFlow, tf_keras, tfmot and scikit-learn made unimportable: the
# standalone path must work with only numpy and ai-edge-litert.
_BLOCKED = ("import sys\n"
            "for m in ('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization',\n"
            "          'sklearn'):\n"
            "    sys.modules[m] = None\n"
            "from pipeline.cli.app import main, parse_args\n"
            "code = main(parse_args(sys.argv[1:]))\n"
            "heavy = [m for m in ('tensorflow', 'sklearn') if sys.modules.get(m) is not None]\n"
            "assert not heavy, heavy\n"
            "sys.exit(code)\n")


def _blocked_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", _BLOCKED, *args], capture_output=True,
                          text=True, env=env, timeout=120)


@slow
def test_bundle_is_written(demo_run):
    _, run_dir = demo_run
    doc = json.loads((run_dir / "reference" / "expected.json").read_text())
    # the demo recipe adds ai-edge-quantizer's PTQ peer (convert.peers = auto) where the zoo
    # extra is installed
    peer = ["aeq_int8"] if importlib.util.find_spec("ai_edge_quantizer") else []
    assert sorted(doc["variants"]) == sorted(["float32", "ptq_int8", "qat_int8"] + peer)
    with np.load(run_dir / "reference" / "inputs.npz") as npz:
        assert npz["x"].shape == (450, 8, 8, 1) and npz["y"].shape == (450,)
    with np.load(run_dir / "reference" / "qat_int8_outputs.npz") as npz:
        assert npz["arr_0"].dtype == np.int8


@slow
@pytest.mark.parametrize("variant", ["float32", "ptq_int8", "qat_int8"])
def test_standalone_check_passes_without_tensorflow(demo_run, variant):
    _, run_dir = demo_run
    r = _blocked_cli("verify", str(run_dir / f"{variant}.tflite"), "--reference", str(run_dir),
                     "--json")
    assert r.returncode == 0, r.stderr
    chk = json.loads(r.stdout)["reference"]
    assert chk["passed"] and chk["variant"] == variant and chk["matched_by"] == "sha256"
    assert chk["top1_agreement"] == 1.0 and chk["exact_fraction"] == 1.0


@slow
def test_a_changed_model_fails_the_reference(demo_run, tmp_path):
    _, run_dir = demo_run
    content = (run_dir / "qat_int8.tflite").read_bytes()

    def sabotage(m):
        _, t = craft.tensor_named(m, "quant_logits/MatMul", constant=True)
        m.buffers[t.buffer].data = -np.array(m.buffers[t.buffer].data)

    bad = tmp_path / "qat_int8.tflite"
    bad.write_bytes(craft.edit(content, sabotage))
    r = _blocked_cli("verify", str(bad), "--reference", str(run_dir / "reference"))
    assert r.returncode == 1, r.stderr
    assert "reference check FAILED as qat_int8 (matched by file name" in r.stdout
    assert "top-1 agreement" in r.stdout and "gate failed" in r.stdout


@slow
def test_reference_usage_errors(demo_run, tmp_path):
    _, run_dir = demo_run
    r = _blocked_cli("verify", str(run_dir / "qat_int8.tflite"), "--reference", str(tmp_path))
    assert r.returncode == 2 and "No reference bundle found" in r.stderr
    other = tmp_path / "mystery.tflite"
    other.write_bytes((run_dir / "float32.tflite").read_bytes()[:-1] + b"\x01")
    r = _blocked_cli("verify", str(other), "--reference", str(run_dir))
    assert r.returncode == 2 and "Pass --variant" in r.stderr


# -- hostile bundles (no training: a one-op model built from scratch) ---------------------
from pipeline.tflite import reference  # noqa: E402
from pipeline.cli.app import main, parse_args  # noqa: E402


def _bundle(d, outputs="tiny_outputs.npz"):
    d.mkdir(exist_ok=True)
    (d / "tiny.tflite").write_bytes(craft.tiny_model())
    np.savez(d / "inputs.npz", x=np.zeros((3, 4), np.float32), y=np.zeros(3, np.int64))
    np.savez(d / "tiny_outputs.npz", np.zeros((3, 4), np.int8))
    (d / "expected.json").write_text(json.dumps(
        {"variants": {"tiny": {"outputs": outputs, "accuracy": 1.0}}}))
    return d


def _verify(d, capsys) -> tuple[int, str]:
    code = main(parse_args(["verify", str(d / "tiny.tflite"), "--reference", str(d)]))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 2 or (len(lines) == 1 and "Traceback" not in err), err
    return code, err


def test_a_scratch_bundle_passes(tmp_path, capsys):
    code, err = _verify(_bundle(tmp_path / "b"), capsys)
    assert code == 0, err


@pytest.mark.parametrize("entry", ["../../../../../../etc/passwd", "../outside.npz",
                                   "sub/../../outside.npz"])
def test_a_manifest_path_escaping_the_bundle_is_refused(tmp_path, capsys, entry):
    np.savez(tmp_path / "outside.npz", np.zeros((3, 4), np.int8))  # readable, but outside
    code, err = _verify(_bundle(tmp_path / "b", outputs=entry), capsys)
    assert code == 2 and "names a file outside its directory" in err and entry in err


def test_an_absolute_manifest_path_is_refused(tmp_path, capsys):
    code, err = _verify(_bundle(tmp_path / "b", outputs="/etc/passwd"), capsys)
    assert code == 2 and "outside the bundle (an absolute path)" in err and "/etc/passwd" in err


@pytest.mark.parametrize("which", ["tiny_outputs.npz", "inputs.npz", "expected.json"])
def test_a_symlink_out_of_the_bundle_is_refused(tmp_path, capsys, which):
    d = _bundle(tmp_path / "b")
    secret = tmp_path / "secret"
    (d / which).rename(secret)  # the real content, moved outside
    (d / which).symlink_to(secret)
    code, err = _verify(d, capsys)
    assert code == 2 and "outside its directory" in err and str(secret) in err


def test_a_fifo_in_the_bundle_fails_at_once(tmp_path, capsys):
    d = _bundle(tmp_path / "b")
    (d / "tiny_outputs.npz").unlink()
    os.mkfifo(d / "tiny_outputs.npz")
    code, err = _verify(d, capsys)  # used to block in np.load forever
    assert code == 2 and "is a named pipe (FIFO), not a regular file" in err


def test_an_oversized_manifest_is_refused_unread(tmp_path, capsys, monkeypatch):
    d = _bundle(tmp_path / "b")
    with open(d / "expected.json", "ab") as f:
        f.truncate(reference.MAX_MANIFEST_BYTES + 1)
    code, err = _verify(d, capsys)
    assert code == 2 and "reference manifest is too large" in err


def test_an_npz_bomb_is_refused_by_its_declared_size(tmp_path, capsys, monkeypatch):
    d = _bundle(tmp_path / "b")
    # 64 MiB of zeros compress to ~64 KiB; with a 1 MiB limit the zip directory gives it away
    np.savez_compressed(d / "tiny_outputs.npz", np.zeros(64 << 20, np.int8))
    monkeypatch.setattr(reference, "MAX_NPZ_BYTES", 1 << 20)
    code, err = _verify(d, capsys)
    assert code == 2 and "too large once decompressed" in err and "(67,108," in err


def test_an_npz_header_claiming_terabytes_is_refused_unallocated(tmp_path, capsys):
    """The zip directory declares a small member, its .npy header a 58 TiB shape: the header
    is checked against the member's size before numpy allocates (it raised MemoryError)."""
    import io
    import zipfile

    from numpy.lib import format as npy

    d = _bundle(tmp_path / "b")
    member = io.BytesIO()
    npy.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                        "shape": (16 * 10 ** 12,)})
    with zipfile.ZipFile(d / "tiny_outputs.npz", "w") as z:
        z.writestr("arr_0.npy", member.getvalue() + b"\0" * 64)
    code, err = _verify(d, capsys)
    assert code == 2 and "is truncated" in err and "tiny_outputs.npz:arr_0" in err
    assert "64,000,000,000,000 bytes" in err


@pytest.mark.parametrize("doc, words", [
    ("[1, 2, 3]", "unexpected structure"),
    ('{"variants": {"tiny": {"outputs": 5}}}', "unexpected structure"),
    ('{"variants": {"tiny": {"outputs": "tiny_outputs.npz"' + "}" * 2, "unreadable"),
    ("[" * 100_000 + "]" * 100_000, "unreadable"),
], ids=["list", "outputs-not-a-string", "truncated", "nested-100k-deep"])
def test_a_malformed_manifest_is_a_usage_error(tmp_path, capsys, doc, words):
    d = _bundle(tmp_path / "b")
    (d / "expected.json").write_text(doc)
    code, err = _verify(d, capsys)
    assert code == 2 and words in err and "expected.json" in err
