"""Untrusted .tflite files: one-line errors with exit 2, and never a crash of this process."""

import collections

import numpy as np
import pytest

from pipeline.cli import main, parse_args
from pipeline.errors import ModelFileError
from pipeline.isolated import IsolatedInterpreter
from pipeline.records import Variant
from pipeline.runtime import ModelRunner
from pipeline.tflite_model import TFLiteFormatError, TFLiteModel
from tests.conftest import run_cli
from tests.pipeline import tflite_craft as craft


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
