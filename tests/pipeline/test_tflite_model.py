"""The inspector against facts computed independently with LiteRT's generated flatbuffer
bindings (ai_edge_litert.schema_py_generated), on the three real variants."""

import numpy as np
import pytest

from pipeline.records import Variant
from pipeline.tflite_model import TFLiteFormatError, TFLiteModel


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


@pytest.mark.parametrize("variant", list(Variant))
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
