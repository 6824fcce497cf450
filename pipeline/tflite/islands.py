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
(``model/quant_block3_conv/...``), with the matcher the layer-parity check uses (names.py). The result is reported by
the inspector as not full-int8 (float activations, QUANTIZE/DEQUANTIZE inside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import ConversionError
from pipeline.tflite.names import LayerNames, primary

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


def keep_float(content: bytes, layer_names: list[str] | tuple[str, ...]
               ) -> tuple[bytes, IslandReport]:
    """Return the model with the ops of ``layer_names`` in float32, and what changed."""
    from ai_edge_litert import schema_py_generated as s
    import flatbuffers

    model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(content, 0))
    sg = model.subgraphs[0]
    island = _island_ops(model, sg, layer_names)
    desc = tuple(f"{_op_name(model, sg.operators[k].opcodeIndex)} #{k} "
                 f"({primary(_name(sg.tensors[int(sg.operators[k].outputs[0])]))})"
                 for k in island)
    surgery = _Surgery(model, sg, island)
    for k in island:
        surgery.float_inputs(k)
        surgery.float_outputs(k)
    added = surgery.splice()
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), IslandReport(tuple(layer_names), desc,
                                                 tuple(surgery.created), added)


def _name(t) -> str:
    return t.name.decode(errors="replace")


def _island_ops(model, sg, layer_names) -> list[int]:
    """Indices of the ops whose outputs are named after ``layer_names``; each must have a
    float kernel taking the same inputs."""
    matcher = LayerNames(layer_names)
    island = [k for k, op in enumerate(sg.operators)
              if any(matcher.mentions(_name(sg.tensors[int(o)])) for o in op.outputs)]
    if not island:
        raise ConversionError("No op of the .tflite comes from the layers to keep float",
                              list(layer_names), "Check annotate.keep_float against the "
                              "layer names in the coverage report")
    bad = [f"{_op_name(model, sg.operators[k].opcodeIndex)} #{k}" for k in island
           if _op_name(model, sg.operators[k].opcodeIndex) not in _FLOATABLE]
    if bad:
        raise ConversionError("These ops cannot be switched to float in place", bad,
                              "Keep a different set of layers float")
    return island


class _Surgery:
    """The edits of one island: float32 twins of its tensors, DEQUANTIZE ops before it and
    QUANTIZE ops after it, spliced into the operator list at the end."""

    def __init__(self, model, sg, island: list[int]):
        from ai_edge_litert import schema_py_generated as s

        self.s, self.model, self.sg, self.island = s, model, sg, set(island)
        self.producers = {int(o): k for k, op in enumerate(sg.operators) for o in op.outputs}
        self.consumers: dict[int, list[int]] = {}
        for k, op in enumerate(sg.operators):
            for i in op.inputs:
                self.consumers.setdefault(int(i), []).append(k)
        self.graph_outputs = {int(o) for o in sg.outputs}
        self.float_twin: dict[int, int] = {}
        self.created: list[str] = []
        self.before: dict[int, list] = {}
        self.after: dict[int, list] = {}
        self.deq_code = opcode_index(model, "DEQUANTIZE")
        self.q_code = opcode_index(model, "QUANTIZE")

    def new_tensor(self, like, dtype: int, data: np.ndarray | None = None) -> int:
        """A tensor shaped like ``like``, named ``<like's name>/float``."""
        t = self.s.TensorT()
        t.name = f"{_name(like)}/float".encode()
        t.type = dtype
        t.shape = np.array(like.shape, dtype=np.int32) if like.shape is not None else None
        t.shapeSignature = like.shapeSignature
        b = self.s.BufferT()
        if data is not None:
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
        self.model.buffers.append(b)
        t.buffer = len(self.model.buffers) - 1
        self.sg.tensors.append(t)
        self.created.append(t.name.decode())
        return len(self.sg.tensors) - 1

    def _op(self, code: int, src: int, dst: int):
        op = self.s.OperatorT()
        op.opcodeIndex, op.inputs = code, np.array([src], np.int32)
        op.outputs = np.array([dst], np.int32)
        return op

    def float_inputs(self, k: int) -> None:
        """Op ``k`` reads float32: constants dequantized in place, activations from outside
        the island through a DEQUANTIZE."""
        op = self.sg.operators[k]
        op.inputs = np.array([self._float_input(k, int(i)) for i in op.inputs], np.int32)

    def _float_input(self, k: int, i: int) -> int:
        if i < 0:
            return i
        t = self.sg.tensors[i]
        buf = self.model.buffers[t.buffer].data if t.buffer < len(self.model.buffers) else None
        is_const = buf is not None and len(buf) > 0
        quantized = t.quantization is not None and t.quantization.scale is not None \
            and t.type in (_INT8, _UINT8, _INT32)
        if not quantized or (t.type == _INT32 and not is_const):
            return i
        if i not in self.float_twin:
            if is_const:
                self.float_twin[i] = self.new_tensor(t, _FLOAT32, _dequantized(self.model, t))
            else:
                self.float_twin[i] = self.new_tensor(t, _FLOAT32)
                if self.producers.get(i) not in self.island:  # int8 from outside: dequantize
                    self.before.setdefault(k, []).append(
                        self._op(self.deq_code, i, self.float_twin[i]))
        return self.float_twin[i]

    def float_outputs(self, k: int) -> None:
        """Op ``k`` writes float32; a QUANTIZE restores the int8 tensor wherever the rest of
        the graph (or the graph's output) reads it."""
        op = self.sg.operators[k]
        new_outputs = []
        for o in op.outputs:
            o = int(o)
            t = self.sg.tensors[o]
            if t.type not in (_INT8, _UINT8):
                new_outputs.append(o)
                continue
            if o not in self.float_twin:
                self.float_twin[o] = self.new_tensor(t, _FLOAT32)
            twin = self.float_twin[o]
            new_outputs.append(twin)
            outside = [c for c in self.consumers.get(o, []) if c not in self.island]
            if outside or o in self.graph_outputs:  # the rest of the graph reads int8
                self.after.setdefault(k, []).append(self._op(self.q_code, twin, o))
        op.outputs = np.array(new_outputs, np.int32)

    def splice(self) -> int:
        """Insert the new ops around their island ops; returns how many were added."""
        ops = []
        for k, op in enumerate(self.sg.operators):
            ops += self.before.get(k, []) + [op] + self.after.get(k, [])
        added = len(ops) - len(self.sg.operators)
        self.sg.operators = ops
        return added


def only_islands(verdict, report: IslandReport) -> bool:
    """True if every reason the model is not full-int8 is one of the requested islands."""
    made = set(report.float_tensors)
    strip = lambda item: item.rsplit(" (", 1)[0]
    floats_ok = all(strip(a) in made for a in verdict.float_activations)
    quant_ok = all(any(t in q for t in made) for q in verdict.quant_ops_inside)
    return floats_ok and quant_ok and not verdict.hybrid_ops and not verdict.float_io
