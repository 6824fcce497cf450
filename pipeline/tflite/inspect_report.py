"""The ``inspect`` command's document (JSON) and its text rendering. No TensorFlow."""

from __future__ import annotations

from pipeline.core.records import SCHEMA_VERSION
from pipeline.tflite import verdict as verdict_mod
from pipeline.tflite.tflite_model import TFLiteModel


def build(view: TFLiteModel, *, allow_float_io: bool = False, tensors: bool = False) -> dict:
    # a 16x8 model (int16 activations), or one mixing int8 and int16 per op, is judged
    # full-integer at its own precision
    verdict = view.verdict(allow_float_io=allow_float_io,
                           activations=view.activation_precision())
    doc = {
        "schema_version": SCHEMA_VERSION,
        "file": view.source,
        "size_bytes": view.file_size,
        "schema_version_of_model": view.version,
        "description": view.description,
        "subgraphs": len(view.subgraphs),
        "inputs": [t.to_dict() for t in view.inputs()],
        "outputs": [t.to_dict() for t in view.outputs()],
        "signatures": [{"key": s.key, "subgraph": s.subgraph, "inputs": sorted(s.inputs),
                        "outputs": sorted(s.outputs)} for s in view.signatures],
        "ops": view.op_counts(),
        "op_precisions": view.op_precisions(),
        "tensors_by_dtype": view.tensor_dtype_counts(),
        "size_breakdown": view.size_breakdown(),
        "metadata": sorted(view.metadata),
        "verdict": verdict.to_dict(),
    }
    if tensors:
        doc["tensors"] = [t.to_dict() for sg in view.subgraphs for t in sg.tensors]
    return doc


def _io(t: dict) -> str:
    q = "" if t["scale"] is None else f"  scale {t['scale']}  zero point {t['zero_point']}"
    return f"  {t['name']}  {t['dtype']} {t['shape']}{q}"


def text(doc: dict) -> str:
    v = doc["verdict"]
    kind = verdict_mod.kind(v.get("activations", "int8"))
    lines = [f"{doc['file']}  ({doc['size_bytes']:,} bytes, schema v{doc['schema_version_of_model']}, "
             f"{doc['subgraphs']} subgraph(s))",
             f"{kind}: {'YES' if v['full_int8'] else 'NO'}"]
    lines += [f"  - {r}" for r in v["reasons"]]
    lines += ["inputs:"] + [_io(t) for t in doc["inputs"]]
    lines += ["outputs:"] + [_io(t) for t in doc["outputs"]]
    if doc["signatures"]:
        lines.append("signatures: " + ", ".join(
            f"{s['key']} ({', '.join(s['inputs'])} -> {', '.join(s['outputs'])})"
            for s in doc["signatures"]))
    lines.append("ops: " + ", ".join(f"{k} x{n}" for k, n in doc["ops"].items()))
    lines.append("op precisions (first output): " + ", ".join(
        f"{k} " + "/".join(f"{d} x{n}" for d, n in c.items())
        for k, c in doc.get("op_precisions", {}).items()))
    lines.append("tensors: " + ", ".join(
        f"{k} {c['activations']} activation(s) + {c['constants']} constant(s)"
        for k, c in doc["tensors_by_dtype"].items()))
    total = doc["size_breakdown"]["total"]
    lines.append("size: " + ", ".join(
        f"{k} {n:,} ({100 * n / total:.0f} %)" for k, n in doc["size_breakdown"].items()
        if k != "total" and n))
    if doc.get("tensors"):
        lines.append("all tensors:")
        for t in doc["tensors"]:
            lines.append(f"  #{t['index']:<4} {t['dtype']:<8} {str(t['shape']):<18} "
                         f"{'const' if t['constant'] else 'act  '} {t['name'][:90]}")
    return "\n".join(lines)
