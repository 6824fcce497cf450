"""Test helper: edit a .tflite through LiteRT's generated object API and re-pack it.

Independent of pipeline.tflite_model (it uses ai_edge_litert.schema_py_generated and the
flatbuffers package), so crafted files test our reader instead of being produced by it.
"""

from __future__ import annotations

import numpy as np

from pipeline import islands


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
