"""The inspector against facts computed independently with LiteRT's generated flatbuffer
bindings (ai_edge_litert.schema_py_generated), on the three real variants."""

import numpy as np
import pytest

from pipeline.core.records import Variant
from pipeline.tflite.tflite_model import TFLiteFormatError, TFLiteModel


def _reference(content: bytes) -> dict:
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(content, 0))
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    sg = m.subgraphs[0]
    ops = {}
    for op in sg.operators:
        code = m.operatorCodes[op.opcodeIndex]
        name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        ops[name] = ops.get(name, 0) + 1
    tensors = [(t.name.decode(), types[t.type], tuple(int(d) for d in t.shape),
                None if t.quantization is None or t.quantization.scale is None
                else float(t.quantization.scale[0])) for t in sg.tensors]
    return {"ops": ops, "tensors": tensors, "inputs": list(sg.inputs),
            "outputs": list(sg.outputs), "buffers": [0 if b.data is None else len(b.data)
                                                     for b in m.buffers]}


@pytest.mark.parametrize("variant", [v for v in Variant if v is not Variant.AEQ_MIXED])
def test_inspector_matches_the_reference_parser(tflite_variants, variant):
    content = tflite_variants[variant].content
    ref = _reference(content)
    view = TFLiteModel.from_bytes(content)
    assert view.op_counts() == ref["ops"]
    got = [(t.name, t.dtype, t.shape, t.scale) for t in view.main.tensors]
    assert [g[:3] for g in got] == [r[:3] for r in ref["tensors"]]
    for g, r in zip(got, ref["tensors"]):
        assert (g[3] is None and not r[3]) or g[3] == pytest.approx(r[3])
    assert list(view.main.inputs) == ref["inputs"]
    assert list(view.main.outputs) == ref["outputs"]
    assert view.buffer_sizes == ref["buffers"]
    sizes = view.size_breakdown()
    assert sizes["total"] == len(content)
    assert sum(v for k, v in sizes.items() if k != "total") == len(content)


def test_verdicts_of_the_three_variants(tflite_variants):
    assert not TFLiteModel.from_bytes(tflite_variants[Variant.FLOAT32].content).verdict().full_int8
    for v in (Variant.PTQ_INT8, Variant.QAT_INT8):
        verdict = TFLiteModel.from_bytes(tflite_variants[v].content).verdict()
        assert verdict.full_int8 and verdict.reasons == ()


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty"),
    (b"<!DOCTYPE html><html>", r"text \(HTML"),
    (b"\x10\x00\x00\x00XXXX" + b"\x00" * 32, "identifier 'TFL3'"),
    (b"\xff\xff\x00\x00TFL3" + b"\x00" * 32, "root offset"),
])
def test_header_problems(data, fragment):
    with pytest.raises(TFLiteFormatError, match=fragment):
        TFLiteModel.from_bytes(data)


def test_truncated_model_is_a_format_error(tflite_variants):
    content = tflite_variants[Variant.QAT_INT8].content
    for cut in np.linspace(9, len(content) - 1, 25).astype(int):
        try:
            TFLiteModel.from_bytes(content[:cut])
        except TFLiteFormatError:
            continue
        pytest.fail(f"truncation at {cut} was accepted")


# -- untrusted files: bounded reads and bounded work (no training: models built from scratch) --
import os  # noqa: E402
import time  # noqa: E402

from pipeline.tflite import flatbuffer_reader, tflite_model  # noqa: E402
from pipeline.cli.app import main, parse_args  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests import tflite_craft as craft  # noqa: E402


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_fifo_fails_at_once_instead_of_hanging(tmp_path, command):
    fifo = tmp_path / "model.tflite"
    os.mkfifo(fifo)
    extra = ["--reference", str(tmp_path), "--timeout", "5"] if command == "verify" else []
    r = run_cli(command, str(fifo), *extra, timeout=60)  # used to block in open() forever
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "is a named pipe (FIFO), not a regular file" in line and str(fifo) in line


def test_a_device_file_is_named_as_such_not_missing(capsys):
    assert main(parse_args(["inspect", os.devnull])) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "is a character device, not a regular file" in line and "does not exist" not in line


def test_a_directory_is_refused(tmp_path, capsys):
    assert main(parse_args(["inspect", str(tmp_path)])) == 2
    assert "is a directory, not a regular file" in _one_error_line(capsys.readouterr().err)


class _CountingFile:
    """Wraps the file object open_regular makes; counts the bytes read from it."""

    total = 0

    def __init__(self, f):
        self._f = f

    def read(self, n=-1):
        data = self._f.read(n)
        _CountingFile.total += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_a_3gb_sparse_file_is_refused_by_its_size_unread(tmp_path, monkeypatch, capsys):
    big = tmp_path / "huge.tflite"
    with open(big, "wb") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    real = os.fdopen
    _CountingFile.total = 0
    monkeypatch.setattr(tflite_model.os, "fdopen", lambda *a, **k: _CountingFile(real(*a, **k)))
    assert main(parse_args(["inspect", str(big)])) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "too large (3,221,225,472 bytes; the limit is 2,147,483,648)" in line
    assert _CountingFile.total == 0


def test_the_header_is_checked_before_the_rest_is_read(tmp_path, monkeypatch):
    zeros = tmp_path / "zeros.tflite"
    with open(zeros, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB of zeros, under the size limit, no TFL3 identifier
    real = os.fdopen
    _CountingFile.total = 0
    monkeypatch.setattr(tflite_model.os, "fdopen", lambda *a, **k: _CountingFile(real(*a, **k)))
    with pytest.raises(TFLiteFormatError, match="identifier 'TFL3'"):
        tflite_model.read_file(zeros)
    assert _CountingFile.total <= tflite_model.HEADER_BYTES


def test_a_scratch_model_is_read_within_its_work_budget():
    content = craft.tiny_model()
    seen = []
    real = flatbuffer_reader.Buf.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        seen.append(self)

    flatbuffer_reader.Buf.__init__ = spy
    try:
        view = TFLiteModel.from_bytes(content)
    finally:
        flatbuffer_reader.Buf.__init__ = real
    assert view.op_counts() == {"RELU": 1}
    # a file whose objects do not overlap needs at most one unit per 4 bytes
    assert seen[0].work <= len(content) // 4 + 16


def test_repeated_offsets_fail_fast_with_bounded_work(monkeypatch):
    """20,000 subgraph entries -> one subgraph whose 20,000 tensor entries -> one tensor: 160 KB
    that a naive walk expands to 4e8 tensors (the 220 KB file took 115 s and 3.8 GB)."""
    content = craft.repeated_offsets(20_000, 20_000)
    assert len(content) < 200_000
    calls = {"charge": 0}
    real = flatbuffer_reader.Buf.charge

    def counted(self, units, pos=None):
        calls["charge"] += 1
        return real(self, units, pos)

    monkeypatch.setattr(flatbuffer_reader.Buf, "charge", counted)
    with pytest.raises(TFLiteFormatError, match="repeated offsets amplify") as info:
        TFLiteModel.from_bytes(content, source="amplified.tflite")
    assert "amplified.tflite" in str(info.value)
    # the walk stopped within the budget: about size/2 units, not 4e8 tensors
    assert calls["charge"] <= int(len(content) * flatbuffer_reader.WORK_PER_BYTE) + \
        flatbuffer_reader.WORK_BASE + 1


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_repeated_offsets_file_exits_2_from_the_cli(tmp_path, command):
    path = tmp_path / "amplified.tflite"
    path.write_bytes(craft.repeated_offsets(30_000, 30_000))
    extra = ["--reference", str(tmp_path)] if command == "verify" else []
    t0 = time.monotonic()
    r = run_cli(command, str(path), *extra, timeout=120)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "repeated offsets" in line and str(path) in line
    assert time.monotonic() - t0 < 60  # was 115 s for a smaller amplification


def _many_tensors(n: int) -> bytes:
    def grow(m):
        sg = m.subgraphs[0]
        extra = []
        for k in range(n):
            t = craft.unpack(craft.tiny_model()).subgraphs[0].tensors[0]
            t.name = f"extra_{k}".encode()
            t.buffer = 0
            extra.append(t)
        sg.tensors = list(sg.tensors) + extra
    return craft.edit(craft.tiny_model(), grow)


def test_the_precheck_stops_at_its_deadline():
    content = _many_tensors(3000)
    TFLiteModel.from_bytes(content)  # a valid model: only the clock stops it
    with pytest.raises(TFLiteFormatError, match="pre-check did not finish within the timeout"):
        TFLiteModel.from_bytes(content, source="slow.tflite", deadline=time.monotonic() - 1)


def test_verify_timeout_covers_the_precheck(tmp_path, capsys):
    path = tmp_path / "slow.tflite"
    path.write_bytes(_many_tensors(3000))
    code = main(parse_args(["verify", str(path), "--reference", str(tmp_path),
                            "--timeout", "1e-9"]))
    assert code == 2
    assert "pre-check did not finish" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_verify_timeout_must_be_positive(tmp_path, capsys, value):
    path = tmp_path / "tiny.tflite"
    path.write_bytes(craft.tiny_model())
    code = main(parse_args(["verify", str(path), "--reference", str(tmp_path),
                            "--timeout", value]))
    assert code == 2
    assert "--timeout must be a positive number" in _one_error_line(capsys.readouterr().err)
