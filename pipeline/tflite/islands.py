"""Float islands: keep chosen layers float inside an otherwise int8 .tflite (a mixed model).

The TFLite converter offers no way to leave an op float in a QAT model (its node denylist,
``mlir_quantize(denylisted_nodes=...)``, only applies to calibration-based quantization, and
a QAT model's fake-quant ranges win). So the surgery is done on the flatbuffer after
conversion, with LiteRT's generated object API (ai_edge_litert.schema_py_generated +
flatbuffers, no TensorFlow):

  for each op produced by a kept-float layer: its int8 weights and int32 bias become float32
  constants (dequantized with their own per-channel scales), its int8 activation inputs get a
  DEQUANTIZE (unless another island op produces them in float), its outputs become float32
  and a QUANTIZE restores the original int8 tensor wherever the rest of the graph reads it.

Layers are matched to ops by the Keras layer names the converter writes into tensor names
(``model/quant_block3_conv/...``), as the layer-parity check does. The result is reported by
the inspector as not full-int8 (float activations, QUANTIZE/DEQUANTIZE inside the graph).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import ConversionError

_TOKEN = re.compile(r"[/;:]")
_FLOAT32, _INT32, _INT8, _UINT8 = 0, 2, 9, 3
# ops whose float kernel takes the same inputs/options as the int8 one
_FLOATABLE = {"ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
              "FULLY_CONNECTED", "LOGISTIC", "MAX_POOL_2D", "MEAN", "MUL", "PAD", "RELU",
              "RELU6", "RESHAPE", "SOFTMAX", "SUB", "TANH", "HARD_SWISH", "LEAKY_RELU",
              "TRANSPOSE_CONV", "SQUEEZE", "PADV2", "RESIZE_BILINEAR", "MAXIMUM", "MINIMUM",
              "SUM", "TRANSPOSE", "SPLIT", "STRIDED_SLICE", "DEQUANTIZE", "QUANTIZE"}


@dataclass(frozen=True)
class IslandReport:
    layers: tuple[str, ...]
    ops: tuple[str, ...]              # "CONV_2D #5 (tensor name)"
    float_tensors: tuple[str, ...]    # names of the float32 tensors created
    added_ops: int                    # DEQUANTIZE + QUANTIZE inserted

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "ops": list(self.ops),
                "float_tensors": list(self.float_tensors), "added_ops": self.added_ops}


def _names(layer_names) -> set[str]:
    return {n for l in layer_names for n in (l, f"quant_{l}")}


def _op_name(model, code) -> str:
    from ai_edge_litert import schema_py_generated as s

    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    oc = model.operatorCodes[code]
    return names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "?")


def opcode_index(model, name: str) -> int:
    """Index of builtin op ``name`` in the model's opcode table (added if absent)."""
    from ai_edge_litert import schema_py_generated as s

    code = getattr(s.BuiltinOperator, name)
    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            return i
    oc = s.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def _dequantized(model, t) -> np.ndarray:
    """The float values of a quantized constant tensor (per-channel aware)."""
    raw = bytes(np.asarray(model.buffers[t.buffer].data, dtype=np.uint8))
    dtype = {_INT8: np.int8, _UINT8: np.uint8, _INT32: np.int32}[t.type]
    q = np.frombuffer(raw, dtype=dtype).reshape(t.shape).astype(np.float64)
    qp = t.quantization
    scale = np.asarray(qp.scale, dtype=np.float64)
    zp = np.asarray(qp.zeroPoint if qp.zeroPoint is not None else [0], dtype=np.float64)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[qp.quantizedDimension] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape) if zp.size > 1 else zp
    return ((q - zp) * scale).astype(np.float32)


def keep_float(content: bytes, layer_names: list[str] | tuple[str, ...]) -> tuple[bytes, IslandReport]:
    """Return the model with the ops of ``layer_names`` in float32, and what changed."""
    from ai_edge_litert import schema_py_generated as s
    import flatbuffers

    model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(content, 0))
    sg = model.subgraphs[0]
    wanted = _names(layer_names)
    producers = {}
    for k, op in enumerate(sg.operators):
        for o in op.outputs:
            producers[int(o)] = k
    island = []
    for k, op in enumerate(sg.operators):
        outs = [sg.tensors[int(o)] for o in op.outputs]
        tokens = set()
        for t in outs:
            tokens |= set(_TOKEN.split(t.name.decode(errors="replace")))
        if tokens & wanted:
            island.append(k)
    if not island:
        raise ConversionError("No op of the .tflite comes from the layers to keep float",
                              list(layer_names), "Check annotate.keep_float against the "
                              "layer names in the coverage report")
    bad = [f"{_op_name(model, sg.operators[k].opcodeIndex)} #{k}" for k in island
           if _op_name(model, sg.operators[k].opcodeIndex) not in _FLOATABLE]
    if bad:
        raise ConversionError("These ops cannot be switched to float in place", bad,
                              "Keep a different set of layers float")
    island_set = set(island)
    desc = tuple(f"{_op_name(model, sg.operators[k].opcodeIndex)} #{k} "
                 f"({sg.tensors[int(sg.operators[k].outputs[0])].name.decode(errors='replace').split(';')[0]})"
                 for k in island)

    def new_tensor(like, name: str, dtype: int, data: np.ndarray | None = None) -> int:
        t = s.TensorT()
        t.name = name.encode()
        t.type = dtype
        t.shape = np.array(like.shape, dtype=np.int32) if like.shape is not None else None
        t.shapeSignature = like.shapeSignature
        b = s.BufferT()
        if data is not None:
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
        model.buffers.append(b)
        t.buffer = len(model.buffers) - 1
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    float_twin: dict[int, int] = {}
    created, before, after = [], {}, {}
    deq_code, q_code = opcode_index(model, "DEQUANTIZE"), opcode_index(model, "QUANTIZE")
    consumers: dict[int, list[int]] = {}
    for k, op in enumerate(sg.operators):
        for i in op.inputs:
            consumers.setdefault(int(i), []).append(k)
    graph_outputs = {int(o) for o in sg.outputs}

    for k in island:
        op = sg.operators[k]
        new_inputs = []
        for i in op.inputs:
            i = int(i)
            if i < 0:
                new_inputs.append(i)
                continue
            t = sg.tensors[i]
            buf = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            is_const = buf is not None and len(buf) > 0
            quantized = t.quantization is not None and t.quantization.scale is not None \
                and t.type in (_INT8, _UINT8, _INT32)
            if not quantized or (t.type == _INT32 and not is_const):
                new_inputs.append(i)
                continue
            if i not in float_twin:
                name = f"{t.name.decode(errors='replace')}/float"
                if is_const:
                    float_twin[i] = new_tensor(t, name, _FLOAT32, _dequantized(model, t))
                else:
                    float_twin[i] = new_tensor(t, name, _FLOAT32)
                    if producers.get(i) not in island_set:  # int8 from outside: dequantize
                        d = s.OperatorT()
                        d.opcodeIndex, d.inputs = deq_code, np.array([i], np.int32)
                        d.outputs = np.array([float_twin[i]], np.int32)
                        before.setdefault(k, []).append(d)
                created.append(sg.tensors[float_twin[i]].name.decode())
            new_inputs.append(float_twin[i])
        op.inputs = np.array(new_inputs, np.int32)
        new_outputs = []
        for o in op.outputs:
            o = int(o)
            t = sg.tensors[o]
            if t.type not in (_INT8, _UINT8):
                new_outputs.append(o)
                continue
            twin = float_twin.get(o)
            if twin is None:
                twin = float_twin[o] = new_tensor(t, f"{t.name.decode(errors='replace')}/float",
                                                  _FLOAT32)
                created.append(sg.tensors[twin].name.decode())
            new_outputs.append(twin)
            outside = [c for c in consumers.get(o, []) if c not in island_set]
            if outside or o in graph_outputs:  # the rest of the graph reads int8
                qop = s.OperatorT()
                qop.opcodeIndex, qop.inputs = q_code, np.array([twin], np.int32)
                qop.outputs = np.array([o], np.int32)
                after.setdefault(k, []).append(qop)
        op.outputs = np.array(new_outputs, np.int32)

    ops = []
    for k, op in enumerate(sg.operators):
        ops += before.get(k, []) + [op] + after.get(k, [])
    added = len(ops) - len(sg.operators)
    sg.operators = ops
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), IslandReport(tuple(layer_names), desc, tuple(created),
                                                 added)


def only_islands(verdict, report: IslandReport) -> bool:
    """True if every reason the model is not full-int8 is one of the requested islands."""
    made = set(report.float_tensors)
    strip = lambda item: item.rsplit(" (", 1)[0]
    floats_ok = all(strip(a) in made for a in verdict.float_activations)
    quant_ok = all(any(t in q for t in made) for q in verdict.quant_ops_inside)
    return floats_ok and quant_ok and not verdict.hybrid_ops and not verdict.float_io
