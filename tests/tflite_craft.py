"""Test helper: edit a .tflite through LiteRT's generated object API and re-pack it.

Independent of pipeline.tflite.tflite_model (it uses ai_edge_litert.schema_py_generated and the
flatbuffers package), so crafted files test our reader instead of being produced by it.
"""

from __future__ import annotations

import numpy as np

from pipeline.tflite import islands


def unpack(content: bytes):
    from ai_edge_litert import schema_py_generated as s

    return s.ModelT.InitFromObj(s.Model.GetRootAsModel(content, 0))


def pack(model) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def edit(content: bytes, fn) -> bytes:
    m = unpack(content)
    fn(m)
    return pack(m)


def set_array(obj, attr: str, index: int, value) -> None:
    """The object API holds numpy arrays that are read-only: replace them."""
    arr = np.array(getattr(obj, attr))
    arr[index] = value
    setattr(obj, attr, arr)


opcode_index = islands.opcode_index  # the opcode table edit the pipeline itself uses


def tensor_named(model, fragment: str, constant: bool):
    sg = model.subgraphs[0]
    for i, t in enumerate(sg.tensors):
        has_data = model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)
        if fragment in t.name.decode() and bool(has_data) == constant:
            return i, t
    raise KeyError(fragment)


def tiny_model(n: int = 4, opcode: str = "RELU") -> bytes:
    """A one-op int8 model built from scratch (no TensorFlow, no training): input int8 [1, n]
    -> ``opcode`` -> output int8 [1, n]. Loads and runs in LiteRT."""
    from ai_edge_litert import schema_py_generated as s

    def tensor(name: str, index_buffer: int):
        t = s.TensorT()
        t.shape = np.array([1, n], np.int32)
        t.shapeSignature = np.array([-1, n], np.int32)
        t.type = s.TensorType.INT8
        t.buffer = index_buffer
        t.name = name.encode()
        q = s.QuantizationParametersT()
        q.scale = np.array([0.05], np.float32)
        q.zeroPoint = np.array([0], np.int64)
        t.quantization = q
        return t

    m = s.ModelT()
    m.version = 3
    m.description = b"tiny"
    code = s.OperatorCodeT()
    code.builtinCode = getattr(s.BuiltinOperator, opcode)
    code.deprecatedBuiltinCode = min(code.builtinCode, 127)
    code.version = 1
    m.operatorCodes = [code]
    m.buffers = [s.BufferT(), s.BufferT(), s.BufferT()]
    sg = s.SubGraphT()
    sg.tensors = [tensor("x", 1), tensor("y", 2)]
    sg.inputs = np.array([0], np.int32)
    sg.outputs = np.array([1], np.int32)
    op = s.OperatorT()
    op.opcodeIndex = 0
    op.inputs = np.array([0], np.int32)
    op.outputs = np.array([1], np.int32)
    sg.operators = [op]
    sg.name = b"main"
    m.subgraphs = [sg]
    return pack(m)


class _Once:
    """Packs its object once and hands out the same offset on every later Pack call."""

    def __init__(self, obj):
        self.obj, self.offset = obj, None

    def Pack(self, builder):  # noqa: N802 (the object API's name)
        if self.offset is None:
            self.offset = self.obj.Pack(builder)
        return self.offset


def repeated_offsets(n_subgraphs: int, n_tensors: int) -> bytes:
    """The tiny model with its subgraphs vector holding ``n_subgraphs`` offsets of ONE subgraph
    table whose tensors vector holds ``n_tensors`` offsets of ONE tensor table: about
    4 * (n_subgraphs + n_tensors) bytes that a naive walk expands to n_subgraphs * n_tensors
    tensors (the amplification a crafted file uses)."""
    m = unpack(tiny_model())
    sg = m.subgraphs[0]
    sg.tensors = [_Once(sg.tensors[0])] * n_tensors
    sg.operators[0].outputs = np.array([0], np.int32)
    sg.outputs = np.array([0], np.int32)
    m.subgraphs = [_Once(sg)] * n_subgraphs
    return pack(m)
