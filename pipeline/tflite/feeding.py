"""Feeding a .tflite's inputs by name, never by position.

A Keras model's input names reach the .tflite as its signature's input names (the converter's
``serving_default`` SignatureDef maps ``tokens`` to tensor ``serving_default_tokens:0``), and the
interpreter lists its input tensors in an order of its own. Data arrives as one array (a
single-input model) or {name: array}; ``order`` returns the arrays in the interpreter's input
order, matching each name to the input's signature name, its tensor name, or its tensor name
without the converter's ``serving_default_`` prefix and ``:0`` suffix. A missing or unknown
name, or an array of the wrong shape, is a one-line error naming the input and what it expects.

Used by the runner (tflite/runtime.py), the isolated child, reference bundles, layer parity and
the harness (android_harness/inputs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import DataError

_PREFIX = "serving_default_"


@dataclass(frozen=True)
class InputSlot:
    """One input of a .tflite: the name to feed it by, its tensor name, shape and dtype."""

    key: str                  # the signature's input name (= the Keras input name), or ""
    tensor: str               # the tensor's name
    shape: tuple[int, ...]    # batch first; -1 / 0 for a dynamic dimension
    dtype: str

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this input answers to, the preferred first."""
        short = self.tensor[len(_PREFIX):] if self.tensor.startswith(_PREFIX) else self.tensor
        short = short.rsplit(":", 1)[0] if short.rsplit(":", 1)[-1].isdigit() else short
        return tuple(dict.fromkeys(n for n in (self.key, short, self.tensor) if n))

    @property
    def name(self) -> str:
        return self.names[0] if self.names else self.tensor

    def describe(self) -> str:
        dims = ", ".join("N" if i == 0 else ("?" if d <= 0 else str(d))
                         for i, d in enumerate(self.shape or (1,)))
        return f"{self.name} ({dims}) {self.dtype}"


def signature_keys(signatures, indices: list[int]) -> list[str]:
    """The signature input name of each input tensor index ("" where none names it).
    ``signatures``: {key: {"inputs": {name: tensor index}}} (the interpreter's full signature
    list) or a list of tflite_model.Signature."""
    by_index: dict[int, str] = {}
    items = signatures.values() if isinstance(signatures, dict) else signatures
    for sig in items:
        inputs = sig.get("inputs", {}) if isinstance(sig, dict) else sig.inputs
        if isinstance(inputs, dict):
            for name, index in inputs.items():
                by_index.setdefault(int(index), str(name))
        break  # the first (serving_default) signature: the one the converter wrote
    return [by_index.get(int(i), "") for i in indices]


def slots_of_interpreter(interpreter, details: list[dict]) -> list[InputSlot]:
    """InputSlots of a LiteRT / tf.lite interpreter's ``get_input_details()``."""
    sigs = {}
    try:  # public API: the first signature's {input name: tensor details}
        key = next(iter(interpreter.get_signature_list() or {}), None)
        if key is not None:
            named = interpreter.get_signature_runner(key).get_input_details()
            sigs = {key: {"inputs": {n: d["index"] for n, d in named.items()}}}
    except Exception:  # a runtime or model without signatures: tensor names only
        sigs = {}
    keys = signature_keys(sigs, [d["index"] for d in details])
    return [InputSlot(k, d["name"], tuple(int(v) for v in (
        d.get("shape_signature") if d.get("shape_signature") is not None else d["shape"])),
        np.dtype(d["dtype"]).name) for k, d in zip(keys, details)]


def slots_of_model(view) -> list[InputSlot]:
    """InputSlots of a parsed .tflite (tflite_model.TFLiteModel), in subgraph input order."""
    tensors = view.inputs()
    keys = signature_keys(view.signatures, [t.index for t in tensors])
    return [InputSlot(k, t.name, tuple(t.shape_signature or t.shape), t.dtype.lower())
            for k, t in zip(keys, tensors)]


def find(slots: list[InputSlot], name: str) -> int | None:
    """The index of the input ``name`` answers to (preferred names first), or None."""
    for rank in range(3):
        for i, s in enumerate(slots):
            if len(s.names) > rank and s.names[rank] == name:
                return i
    return None


def order(slots: list[InputSlot], x, source: str = "", *, error=DataError) -> list[np.ndarray]:
    """The arrays of ``x`` (an array, a list in slot order, or {name: array}) in slot order,
    each checked against its input's shape (batch first)."""
    expected = "; ".join(s.describe() for s in slots)
    where = f" of {source}" if source else ""
    if isinstance(x, dict):
        arrays: list = [None] * len(slots)
        for name, arr in x.items():
            i = find(slots, str(name))
            if i is None:
                raise error(f"No model input{where} is named {name!r}",
                            f"inputs given: {', '.join(map(str, x))}",
                            f"Name the arrays after the model inputs: {expected}")
            arrays[i] = arr
        missing = [s.describe() for s, a in zip(slots, arrays) if a is None]
        if missing:
            raise error(f"No data for model input {missing[0]}{where}",
                        f"inputs given: {', '.join(map(str, x))}",
                        f"Pass one array per input: {expected}")
    elif isinstance(x, (list, tuple)):
        arrays = list(x)
    else:
        arrays = [x]
    if len(arrays) != len(slots):
        raise error(f"The model{where} has {len(slots)} inputs but {len(arrays)} array(s) were "
                    "given", f"{len(arrays)} array(s)",
                    f"Pass a dict {{input name: array}} for: {expected}")
    out = []
    for s, a in zip(slots, arrays):
        a = np.asarray(a)
        want = tuple(s.shape[1:])
        if a.ndim != len(s.shape) or any(w > 0 and w != g for w, g in zip(want, a.shape[1:])):
            raise error(f"Input {s.name}{where} has the wrong shape", f"{a.shape}",
                        f"Pass {s.describe()}")
        out.append(a)
    n = {len(a) for a in out}
    if len(n) > 1:
        raise error(f"The inputs{where} differ in length",
                    ", ".join(f"{s.name}: {len(a)}" for s, a in zip(slots, out)),
                    "Give every input the same number of samples")
    return out


# ops that look ids up in a table: (position of the ids input, position of the table input)
_ID_OPS = {"GATHER": (1, 0), "EMBEDDING_LOOKUP": (0, 1)}
# ops that pass ids on unchanged in value
_PASS_OPS = {"CAST", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "IDENTITY"}


def id_bounds(view) -> dict[int, int]:
    """{input tensor index: number of valid ids} for the integer inputs that index a table
    (an Embedding's GATHER, possibly after a CAST / RESHAPE): ids must lie in [0, bound) -
    the first dimension of the smallest table the input indexes. Random inputs for such an
    input must stay inside it (an id past the table is an out-of-range GATHER)."""
    sg = view.main
    origin = {i: i for i in sg.inputs}
    bounds: dict[int, int] = {}
    for op in sg.operators:  # execution order: an op's inputs are made before it
        if op.opcode in _PASS_OPS and op.inputs and op.inputs[0] in origin:
            for o in op.outputs:
                origin[o] = origin[op.inputs[0]]
        pos = _ID_OPS.get(op.opcode)
        if pos and len(op.inputs) > max(pos) and op.inputs[pos[0]] in origin \
                and 0 <= op.inputs[pos[1]] < len(sg.tensors):
            table = sg.tensors[op.inputs[pos[1]]]
            if table.shape and table.shape[0] > 0:
                src = origin[op.inputs[pos[0]]]
                bounds[src] = min(bounds.get(src, table.shape[0]), int(table.shape[0]))
    return bounds
