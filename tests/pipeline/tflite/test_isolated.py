"""Untrusted .tflite files: one-line errors with exit 2, and never a crash of this process."""

import collections

import numpy as np
import pytest

from pipeline.cli.app import main, parse_args
from pipeline.core.errors import ModelFileError
from pipeline.tflite.isolated import IsolatedInterpreter
from pipeline.core.records import Variant
from pipeline.tflite.runtime import ModelRunner
from pipeline.tflite.tflite_model import TFLiteFormatError, TFLiteModel
from tests.conftest import run_cli
from tests import tflite_craft as craft


@pytest.fixture(scope="module")
def good(tflite_variants) -> bytes:
    return tflite_variants[Variant.QAT_INT8].content


def _op_input_999(m):
    craft.set_array(m.subgraphs[0].operators[0], "inputs", 0, 999)


def _tensor_buffer_999(m):
    m.subgraphs[0].tensors[0].buffer = 999


def _opcode_index_99(m):
    m.subgraphs[0].operators[0].opcodeIndex = 99


def _subgraph_output_77(m):
    craft.set_array(m.subgraphs[0], "outputs", 0, 77)


def _weights_short(m):
    _, t = craft.tensor_named(m, "block1_conv/Conv2D", constant=True)
    m.buffers[t.buffer].data = np.array(m.buffers[t.buffer].data)[:-5]


def _huge_shape(m):
    # an activation claiming 10^9 x 10^4 elements: LiteRT segfaults allocating it
    t = m.subgraphs[0].tensors[m.subgraphs[0].operators[0].outputs[0]]
    t.shape = np.array([1, 1_000_000_000, 10_000, 16], np.int32)


def _bad_file(kind: str, good: bytes) -> bytes:
    rng = np.random.default_rng(0)
    return {
        "empty": b"",
        "html": b"<!DOCTYPE html>\n<html><head><title>Download</title></head></html>\n",
        "wrong_identifier": good[:4] + b"TFL2" + good[8:],
        "random": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "random_with_identifier": b"\x18\x00\x00\x00TFL3" + rng.integers(
            0, 256, 4096, dtype=np.uint8).tobytes(),
        "op_input_out_of_range": craft.edit(good, _op_input_999),
        "tensor_buffer_out_of_range": craft.edit(good, _tensor_buffer_999),
        "opcode_out_of_range": craft.edit(good, _opcode_index_99),
        "subgraph_output_out_of_range": craft.edit(good, _subgraph_output_77),
        "weights_shorter_than_shape": craft.edit(good, _weights_short),
        "huge_activation_shape": craft.edit(good, _huge_shape),
    }[kind]


BAD = ["empty", "html", "wrong_identifier", "random", "random_with_identifier",
       "op_input_out_of_range", "tensor_buffer_out_of_range", "opcode_out_of_range",
       "subgraph_output_out_of_range", "weights_shorter_than_shape", "huge_activation_shape"]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_bad_tflite_gives_one_line_error_and_exit_2(kind, command, good, tmp_path, capsys):
    path = tmp_path / "model.tflite"
    path.write_bytes(_bad_file(kind, good))
    argv = [command, str(path)] + (["--data", "digits"] if command == "verify" else [])
    code = main(parse_args(argv))
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert str(path) in lines[0]


@pytest.mark.parametrize("cut", [1, 7, 8, 100, 0.25, 0.5, 0.9, -1])
def test_truncated_files(cut, good, tmp_path, capsys):
    n = int(len(good) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(good) - 1)
    path = tmp_path / "t.tflite"
    path.write_bytes(good[:n])
    assert main(parse_args(["verify", str(path), "--data", "digits"])) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_console_entry_on_a_bad_file(tmp_path):
    path = tmp_path / "page.tflite"
    path.write_text("<html>not a model</html>")
    r = run_cli("inspect", str(path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_interpreter_crash_is_contained_in_the_child(good):
    """A structurally valid file that segfaults LiteRT 2.3: MAX_POOL_2D re-labelled as SPLIT,
    which reads a second input the op does not have (found by the fuzzer)."""
    def to_split(m):
        sg = m.subgraphs[0]
        op = next(o for o in sg.operators if len(o.inputs) == 1)
        op.opcodeIndex = craft.opcode_index(m, "SPLIT")
        op.builtinOptionsType = 0
        op.builtinOptions = None

    crasher = craft.edit(good, to_split)
    TFLiteModel.from_bytes(crasher)  # passes every structural check
    with IsolatedInterpreter(timeout=30) as child:
        with pytest.raises(ModelFileError) as err:
            child.run(crasher, np.zeros((1, 8, 8, 1), np.float32))
        assert "crashed (signal SIG" in str(err.value)
        # the next request gets a fresh child and works
        outs, desc = child.run(good, np.zeros((1, 8, 8, 1), np.float32))
        assert outs[0].shape == (1, 10) and child.restarts == 1


def test_isolated_outputs_equal_in_process(good, digits):
    x = digits["x_test"][:64]
    outs, desc = IsolatedInterpreter().run(good, x)
    np.testing.assert_array_equal(outs[0], ModelRunner(good).run(x)[0])
    assert desc["inputs"][0]["dtype"] == "int8"


def test_timeout_kills_the_child(good, digits):
    with IsolatedInterpreter(timeout=0.001) as child:
        with pytest.raises(ModelFileError, match="did not finish"):
            child.run(good, digits["x_test"])


def test_fuzz_mutants_never_crash_the_parent(good):
    """>= 500 seeded mutants of a real int8 model through the verifier's path: pre-check in
    this process, load + invoke in the child. Every mutant must end as one of the contained
    outcomes; reaching the end of the loop is the 'no parent crash' assertion."""
    rng = np.random.default_rng(20261126)
    x = np.zeros((2, 8, 8, 1), np.float32)
    outcomes = collections.Counter()
    with IsolatedInterpreter(timeout=30) as child:
        for _ in range(600):
            b = bytearray(good)
            kind = rng.integers(4)
            if kind == 0:  # scattered byte overwrites
                for _ in range(rng.integers(1, 9)):
                    b[rng.integers(len(b))] = rng.integers(256)
            elif kind == 1:  # one bit flip
                b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
            elif kind == 2:  # truncation
                b = b[: rng.integers(len(b))]
            else:  # a random 32-bit word (offsets, lengths, indices)
                p = int(rng.integers(0, len(b) - 4))
                b[p: p + 4] = int(rng.integers(0, 2**32, dtype=np.uint64)).to_bytes(4, "little")
            try:
                TFLiteModel.from_bytes(bytes(b))
            except TFLiteFormatError:
                outcomes["rejected by pre-check"] += 1
                continue
            try:
                child.run(bytes(b), x, precheck=False)
                outcomes["ran"] += 1
            except ModelFileError as exc:
                outcomes["child crash contained" if "crashed" in str(exc)
                         else "interpreter error"] += 1
    assert sum(outcomes.values()) == 600
    assert outcomes["rejected by pre-check"] > 100 and outcomes["ran"] > 50, outcomes


# -- the child never outlives the parent, leaves nothing behind, and names the file ----------
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from pipeline.tflite import isolated  # noqa: E402
from tests.conftest import REPO  # noqa: E402


def _children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(p))
    return out


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _tiny_bundle(d) -> str:
    """A reference bundle for craft.tiny_model(): what `verify --reference` needs, no training."""
    d.mkdir(exist_ok=True)
    (d / "tiny.tflite").write_bytes(craft.tiny_model())
    np.savez(d / "inputs.npz", x=np.zeros((3, 4), np.float32), y=np.zeros(3, np.int64))
    np.savez(d / "tiny_outputs.npz", np.zeros((3, 4), np.int8))
    (d / "expected.json").write_text(json.dumps(
        {"variants": {"tiny": {"outputs": "tiny_outputs.npz", "accuracy": 1.0}}}))
    return str(d / "tiny.tflite")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_verify_kills_its_child_and_leaves_no_temp_files(tmp_path, sig):
    model = _tiny_bundle(tmp_path / "bundle")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, isolated.DELAY_ENV: "120", "TMPDIR": str(tmp),
           "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-m", "pipeline", "verify", model,
                               "--reference", str(tmp_path / "bundle")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: _children(parent.pid), 60), "no isolated child started"
        (child,) = _children(parent.pid)
        time.sleep(0.5)  # the child is inside its (delayed) request now
        parent.send_signal(sig)
        parent.wait(timeout=30)
        assert _wait_for(lambda: not _alive(child), 5), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    if sig == signal.SIGTERM:
        assert parent.returncode == 130 and "interrupted" in parent.stderr.read()
    assert list(tmp.iterdir()) == []  # no qat-isolated-* directory or file behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX process model")
def test_the_watchdog_ends_an_orphaned_child_without_pdeathsig(tmp_path):
    """The portable fallback alone: a child started WITHOUT prctl by a middle process, sent a
    request it sleeps in (so it is not merely reading a closed stdin), then the middle process
    dies; the child's watchdog sees its parent pid change and exits."""
    pid_file = tmp_path / "child.pid"
    model = tmp_path / "tiny.tflite"
    model.write_bytes(craft.tiny_model())
    middle = (
        "import json, os, subprocess, sys, time\n"
        "env = {**os.environ, 'QAT_ISOLATED_PARENT_PID': str(os.getpid()),\n"
        f"       {isolated.DELAY_ENV!r}: '120'}}\n"
        "p = subprocess.Popen([sys.executable, '-m', 'pipeline.tflite.isolated'], env=env,\n"
        "                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        f"content = open({str(model)!r}, 'rb').read()\n"
        "req = {'model_bytes': len(content), 'inputs_bytes': 0, 'batch_size': 0,\n"
        "       'dequantize': True, 'runtime': None, 'num_threads': None}\n"
        "p.stdin.write(json.dumps(req).encode() + b'\\n' + content)\n"
        "p.stdin.flush()\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(1.5)\n"
        "os._exit(0)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", middle], env=env, timeout=60, check=True)
    child = int(pid_file.read_text())
    try:
        assert _wait_for(lambda: not _alive(child), 5), "the orphaned child kept running"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_child_errors_name_the_file_not_bytes():
    def to_custom(m):
        m.operatorCodes[0].builtinCode = 32  # CUSTOM
        m.operatorCodes[0].deprecatedBuiltinCode = 32
        m.operatorCodes[0].customCode = b"Bogus"

    bogus = craft.edit(craft.tiny_model(), to_custom)
    with IsolatedInterpreter(timeout=30) as child:
        with pytest.raises(ModelFileError) as info:
            child.run(bogus, source="models/bogus.tflite")
        msg = str(info.value)
        assert "unresolved custom op: Bogus" in msg and "models/bogus.tflite" in msg
        assert "<bytes>" not in msg
        with pytest.raises(ModelFileError) as info:  # a file LiteRT itself refuses to load
            child.run(b"\0\0\0\0TFL3" + b"\0" * 64, precheck=False, source="zeros.tflite")
        assert "could not load" in str(info.value) and "<bytes>" not in str(info.value)
        assert "zeros.tflite" in str(info.value)


def test_verify_names_the_file_when_the_child_crashes(tmp_path):
    def to_split(m):  # RELU re-labelled as SPLIT: reads a second input it lacks -> SIGSEGV
        m.operatorCodes[0].builtinCode = 49
        m.operatorCodes[0].deprecatedBuiltinCode = 49

    model = _tiny_bundle(tmp_path)
    with open(model, "wb") as f:
        f.write(craft.edit(craft.tiny_model(), to_split))
    r = run_cli("verify", model, "--reference", str(tmp_path), "--variant", "tiny", timeout=120)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert line.count("\n") == 0 and "crashed (signal SIGSEGV)" in line
    assert model in line and "<bytes>" not in line
