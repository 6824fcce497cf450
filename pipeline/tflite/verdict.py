"""The full-int8 verdict of a .tflite, with its reasons.

Full int8 means every activation tensor is int8/uint8 (int32 only for bias-like
intermediates), no QUANTIZE/DEQUANTIZE converts between float and int inside the graph, and no
hybrid op takes a float activation with int8 weights. With ``allow_float_io`` a float model
input feeding a QUANTIZE and a DEQUANTIZE producing a model output are the expected I/O
boundary and not counted.

Works on the subgraphs of a ``tflite_model.TFLiteModel`` (``TFLiteModel.verdict()`` calls it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}
INT8_TYPES = {"INT8", "UINT8"}
# the quantized activation types each precision expects ("int16": 16x8, int16 activations
# with int8 weights; "mixed": int8 or int16 per op, requantized where they meet); a quantized
# activation of another integer type is a reason
ACTIVATION_TYPES = {"int8": INT8_TYPES, "int16": {"INT16"}, "mixed": INT8_TYPES | {"INT16"}}
# what a "yes" means at each judged precision, as the CLI and report say it
KINDS = {"int8": "full-int8", "int16": "full-integer 16x8",
         "mixed": "full-integer (int8 / int16)"}


@dataclass(frozen=True)
class Verdict:
    """Whether the model is full-int8, and why not."""

    full_int8: bool
    reasons: tuple[str, ...]
    float_activations: tuple[str, ...] = ()
    quant_ops_inside: tuple[str, ...] = ()
    hybrid_ops: tuple[str, ...] = ()
    float_io: tuple[str, ...] = ()
    other_precision: tuple[str, ...] = ()  # quantized activations of another integer type
    activations: str = "int8"  # the precision judged: "int8", "int16" (16x8) or "mixed"

    def to_dict(self) -> dict:
        return {"full_int8": self.full_int8, "reasons": list(self.reasons),
                "float_activations": list(self.float_activations),
                "quant_ops_inside": list(self.quant_ops_inside),
                "hybrid_ops": list(self.hybrid_ops), "float_io": list(self.float_io),
                "other_precision": list(self.other_precision),
                "activations": self.activations}


def kind(activations: str) -> str:
    """The verdict's name at a judged precision ("full-int8" for int8)."""
    return KINDS.get(activations, KINDS["int8"])


def line(v: Verdict | None, weight_only: bool = False) -> str:
    """A variant's verdict in one phrase, as `qat run` and `qat convert` print it ("" when it
    has none; a weight-only file computes in float by design, so it is named, not judged)."""
    if v is None:
        return ""
    if weight_only:
        return "weight-only (float compute)"
    return f"{kind(v.activations)}: {'yes' if v.full_int8 else 'NO'}"


@dataclass
class _Findings:
    float_activations: list[str] = field(default_factory=list)
    quant_ops_inside: list[str] = field(default_factory=list)
    hybrid_ops: list[str] = field(default_factory=list)
    float_io: list[str] = field(default_factory=list)
    other_precision: list[str] = field(default_factory=list)
    activations: str = "int8"

    def reasons(self) -> list[str]:
        out = []
        if self.other_precision:
            out.append(f"{len(self.other_precision)} quantized activation tensor(s) not "
                       f"{self.activations}, e.g. {', '.join(self.other_precision[:3])}")
        if self.float_io:
            out.append(f"{len(self.float_io)} float model input/output tensor(s): "
                       f"{', '.join(self.float_io[:3])}")
        if self.float_activations:
            out.append(f"{len(self.float_activations)} float activation tensor(s), e.g. "
                       f"{', '.join(self.float_activations[:3])}")
        if self.quant_ops_inside:
            out.append(f"{len(self.quant_ops_inside)} QUANTIZE/DEQUANTIZE op(s) inside the "
                       f"graph: {', '.join(self.quant_ops_inside[:3])}")
        if self.hybrid_ops:
            out.append(f"{len(self.hybrid_ops)} hybrid (dynamic-range) op(s): "
                       f"{', '.join(self.hybrid_ops[:3])}")
        return out


def judge(subgraphs, *, allow_float_io: bool = False, activations: str = "int8") -> Verdict:
    """The verdict over every subgraph (``tflite_model.Subgraph`` objects): full-integer with
    ``activations`` ("int8"; "int16" for a 16x8 model) for every quantized activation."""
    found = _Findings(activations=activations)
    for sg in subgraphs:
        boundary: set[int] = set()  # float tensors at an allowed I/O QUANTIZE/DEQUANTIZE
        for op in sg.operators:
            ins = [sg.tensors[i] for i in op.inputs if i >= 0]
            outs = [sg.tensors[i] for i in op.outputs if i >= 0]
            if op.opcode in ("QUANTIZE", "DEQUANTIZE"):
                _conversion(sg, op, ins, outs, allow_float_io, boundary, found)
                continue
            float_in = [t for t in ins if not t.is_constant and t.dtype in FLOAT_TYPES]
            int_w = [t for t in ins if t.is_constant and t.dtype in INT8_TYPES]
            if float_in and int_w:
                found.hybrid_ops.append(f"{op.opcode} #{op.index} (float {float_in[0].name} "
                                        f"x int8 {int_w[0].name})")
        _float_tensors(sg, allow_float_io, boundary, found)
        want = ACTIVATION_TYPES[activations]
        found.other_precision += [f"{t.name} ({t.dtype})" for t in sg.tensors
                                  if not t.is_constant and t.quantization is not None
                                  and t.dtype not in FLOAT_TYPES and t.dtype not in want
                                  and t.dtype != "INT32"]  # int32: bias-like accumulators
    reasons = found.reasons()
    return Verdict(not reasons, tuple(reasons), tuple(found.float_activations),
                   tuple(found.quant_ops_inside), tuple(found.hybrid_ops),
                   tuple(found.float_io), tuple(found.other_precision), activations)


def _conversion(sg, op, ins, outs, allow_float_io: bool, boundary: set[int],
                found: _Findings) -> None:
    """A QUANTIZE/DEQUANTIZE between float and int: an I/O boundary (when allowed) or a
    conversion inside the graph."""
    src, dst = (ins[0] if ins else None), (outs[0] if outs else None)
    if src is None or dst is None:
        return
    if src.dtype not in FLOAT_TYPES and dst.dtype not in FLOAT_TYPES:
        return
    float_side = src if src.dtype in FLOAT_TYPES else dst
    at_boundary = ((op.opcode == "QUANTIZE" and src.index in sg.inputs) or
                   (op.opcode == "DEQUANTIZE" and dst.index in sg.outputs))
    if allow_float_io and at_boundary:
        boundary.add(float_side.index)
    else:
        found.quant_ops_inside.append(f"{op.opcode} #{op.index} "
                                      f"({src.dtype}->{dst.dtype}, {float_side.name})")


def _float_tensors(sg, allow_float_io: bool, boundary: set[int], found: _Findings) -> None:
    ios = set(sg.inputs) | set(sg.outputs)
    for t in sg.tensors:
        if t.is_constant or t.dtype not in FLOAT_TYPES:
            continue
        if t.index in ios:
            if not (allow_float_io and t.index in boundary):
                found.float_io.append(f"{t.name} ({t.dtype})")
            continue
        found.float_activations.append(f"{t.name} ({t.dtype})")
