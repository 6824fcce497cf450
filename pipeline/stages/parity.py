"""Layer-by-layer parity between a Keras QAT model and its int8 .tflite.

Why: a QAT model can score well in Keras while its converted .tflite does not (tfmot #368,
#974, #1107; tensorflow#47068), and the outputs alone do not say where the two part ways.

How: run the Keras QAT model capturing the output of every quantized layer (what its
fake-quant produces), run the .tflite with ``experimental_preserve_all_tensors=True`` on the
same inputs, match TFLite activation tensors to Keras layers by name (tflite/names.py) - the
converter names a tensor after the layers it came from, e.g. ``model/quant_conv1_relu/Relu;
model/quant_conv1_bn/FusedBatchNormV3;model/quant_conv1/Conv2D`` for a Conv+BN+ReLU fused into
one op, whose output is the last layer of the chain - dequantize and compare. Errors are in LSB of each tensor's
own scale, two ways:

- cumulative ("drift"): both models run end to end from the same inputs; the error carries
  every upstream difference, magnified wherever a fine-scale tensor follows a coarse one;
- local (parity_local.py): the layer re-run in Keras on the .tflite's own values of its
  inputs; the error this op adds itself.

The first layer whose LOCAL mean error exceeds the threshold is named as the divergence: it is
where the conversion departs from what QAT simulated, not where drift happened to grow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.core import keras_env
from pipeline.stages import parity_local
from pipeline.stages.verify import sqnr_db
from pipeline.tflite.names import LayerNames, primary
from pipeline.tflite.runtime import ModelRunner
from pipeline.tflite.tflite_model import TFLiteModel, read_file


@dataclass(frozen=True)
class LayerRow:
    layer: str                  # Keras layer name (inside its QuantizeWrapper)
    status: str                 # compared | fused | no_tensor
    tensor: str | None = None   # TFLite tensor compared with (or holding the fused result)
    fused_into: str | None = None
    shape: tuple[int, ...] = ()
    scale: float | None = None
    mean_error_lsb: float | None = None
    max_error_lsb: float | None = None
    sqnr_db: float | None = None
    diverges: bool = False
    local_mean_error_lsb: float | None = None  # the layer re-run on the .tflite's inputs
    local_max_error_lsb: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class LayerParity:
    rows: list[LayerRow]
    threshold_lsb: float
    samples: int
    first_divergent: str | None = None
    unmatched_tensors: list[str] = field(default_factory=list)

    @property
    def compared(self) -> list[LayerRow]:
        return [r for r in self.rows if r.status == "compared"]

    def to_dict(self) -> dict:
        return {"threshold_lsb": self.threshold_lsb, "samples": self.samples,
                "first_divergent": self.first_divergent,
                "layers": [r.to_dict() for r in self.rows],
                "unmatched_tensors": self.unmatched_tensors}

    def markdown(self) -> str:
        lines = ["| layer | TFLite tensor | shape | local mean |Δ| (LSB) | local max |Δ| (LSB) | "
                 "drift mean |Δ| (LSB) | drift max |Δ| (LSB) | SQNR (dB) | |",
                 "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for r in self.rows:
            if r.status == "compared":
                flag = "**diverges**" if r.diverges else "ok"
                sqnr = "∞" if r.sqnr_db is None or r.sqnr_db == float("inf") else \
                    f"{r.sqnr_db:.1f}"
                lines.append(f"| {r.layer} | `{_short(r.tensor)}` | {list(r.shape)} | "
                             f"{_lsb(r.local_mean_error_lsb, 3)} | "
                             f"{_lsb(r.local_max_error_lsb, 2)} | {r.mean_error_lsb:.3f} | "
                             f"{r.max_error_lsb:.2f} | {sqnr} | {flag} |")
            elif r.status == "fused":
                lines.append(f"| {r.layer} | fused into {r.fused_into} | | | | | | | |")
            else:
                lines.append(f"| {r.layer} | no tensor (identity at inference) | | | | | | | |")
        verdict = (f"First divergent layer: **{self.first_divergent}** (local mean error above "
                   f"{self.threshold_lsb} LSB)." if self.first_divergent else
                   f"No layer diverges (every local mean error <= {self.threshold_lsb} LSB).")
        verdict += f" Measured on {self.samples:,} test samples."
        verdict += (" Local: the layer re-run in Keras on the .tflite's own input tensors (the "
                    "error it adds itself); drift: both models end to end from the same inputs.")
        return "\n".join(lines + ["", verdict])


def _lsb(v: float | None, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _short(name: str | None, width: int = 60) -> str:
    if not name:
        return ""
    first = primary(name)
    return first if len(first) <= width else "…" + first[-width:]


def quantized_layers(qat_model) -> list:
    """Layers of a QAT model whose outputs are compared: the input quantizer and every
    QuantizeWrapper, in topological order."""
    return [l for l in qat_model.layers
            if type(l).__name__.startswith(("QuantizeWrapper", "QuantizeLayer"))]


def _inner_name(layer) -> str:
    """The Keras name of a QAT model's layer (a QuantizeWrapper's wrapped layer)."""
    return layer.layer.name if hasattr(layer, "layer") else layer.name


def _signature_names(view: TFLiteModel) -> dict[int, set[str]]:
    """Tensor index -> signature keys naming it: model inputs/outputs are named after the
    Keras input/output layers there, not in the tensor name."""
    out: dict[int, set[str]] = {}
    for sig in view.signatures:
        if sig.subgraph != 0:
            continue
        for key, idx in list(sig.inputs.items()) + list(sig.outputs.items()):
            out.setdefault(idx, set()).add(key)
    return out


def match_tensors(view: TFLiteModel, layers: list) -> tuple[dict, dict, list]:
    """Map Keras layers to TFLite activation tensors.

    Returns (Keras layer name -> tensor index for the layer ending a fused chain, layer name
    -> name of the layer it is fused into, unmatched activation tensor names).
    """
    sg = view.main
    matcher = LayerNames(_inner_name(l) for l in layers)
    activations = sorted({i for op in sg.operators for i in op.outputs if i >= 0}
                         | set(sg.inputs))
    by_signature = _signature_names(view)
    quantize_layer = next((_inner_name(l) for l in layers
                           if type(l).__name__ == "QuantizeLayer"), None)
    produced: dict[str, int] = {}
    fused: dict[str, str] = {}
    unmatched = []
    for idx in activations:
        t = sg.tensors[idx]
        if t.is_constant or t.quantization is None:
            continue
        names = matcher.layers_in(t.name, by_signature.get(idx, ()))
        if idx in sg.inputs and quantize_layer:
            names = [quantize_layer]
        if not names:
            unmatched.append(t.name)
            continue
        last = names[-1]
        if last in produced:  # two tensors for one layer (e.g. a requantize): keep the later
            if sg.tensors[produced[last]].name in t.name:
                continue
        produced[last] = idx
        fused.update((n, last) for n in names[:-1])
    return produced, fused, unmatched


# Every compared layer's output is held for all samples at once (Keras and LiteRT side):
# at most this many values per side (1 GB of float32). char_lm's ~200 quantized layers hold
# 2.4 M values per 64-token window: its 2,000 test windows needed more than this machine's
# 24 GB; the budget keeps the first ~100.
MAX_VALUES = 250_000_000


def _within_budget(x, layers, max_values: int):
    """The first samples of ``x`` whose layer outputs fit ``max_values`` (at least one)."""
    per_sample = 0
    for l in layers:
        for shape in (l.output_shape if isinstance(l.output_shape, list) else [l.output_shape]):
            per_sample += int(np.prod([d or 1 for d in shape[1:]]))
    keep = max(1, max_values // max(1, per_sample))
    if isinstance(x, dict):
        return {k: v[:keep] for k, v in x.items()}
    return x[:keep] if isinstance(x, np.ndarray) else [a[:keep] for a in x]


def compare_layers(qat_model, tflite: bytes | str, x: np.ndarray, *, threshold_lsb: float = 1.0,
                   batch_size: int = 0, runtime: str | None = None,
                   max_values: int = MAX_VALUES) -> LayerParity:
    """Compare every quantized layer of ``qat_model`` with the matching tensor of ``tflite``:
    end to end (drift) and locally (parity_local); divergence is judged on the local error.
    Uses the first samples of ``x`` whose layer outputs fit ``max_values`` per side."""
    keras = keras_env.load().keras
    content = tflite if isinstance(tflite, bytes) else read_file(tflite)
    view = TFLiteModel.from_bytes(content)
    layers = quantized_layers(qat_model)
    produced, fused, unmatched = match_tensors(view, layers)

    x = _within_budget(x, layers, max_values)
    capture = keras.Model(qat_model.inputs, [l.output for l in layers])
    keras_outs = capture.predict(x, batch_size=batch_size or 256, verbose=0)
    if not isinstance(keras_outs, list):
        keras_outs = [keras_outs]
    runner = ModelRunner(content, batch_size=batch_size, runtime=runtime,
                         preserve_all_tensors=True)
    _, tensors = runner.run_with_tensors(x, sorted(set(produced.values())))
    # the Keras inputs in the model's order (a dict is keyed by input name)
    xs = [x[n] for n in qat_model.input_names] if isinstance(x, dict) else \
        ([x] if isinstance(x, np.ndarray) else list(x))
    matched = {l.name: produced[_inner_name(l)] for l in layers if _inner_name(l) in produced}
    local = parity_local.local_errors(
        qat_model, {n: tensors[i] for n, i in matched.items()},
        {n: view.main.tensors[i].scale for n, i in matched.items()},
        xs)

    rows: list[LayerRow] = []
    first = None
    for layer, k_out in zip(layers, keras_outs):
        name = _inner_name(layer)
        if name in produced:
            row = _compared_row(name, view.main.tensors[produced[name]],
                                tensors[produced[name]], k_out, local.get(layer.name),
                                threshold_lsb)
            if row.diverges and first is None:
                first = name
            rows.append(row)
        elif name in fused:
            rows.append(LayerRow(name, "fused", fused_into=fused[name]))
        else:
            rows.append(LayerRow(name, "no_tensor"))
    return LayerParity(rows, threshold_lsb, int(len(xs[0])), first, unmatched)


def _compared_row(name: str, t, got: np.ndarray, k_out, local: tuple | None,
                  threshold_lsb: float) -> LayerRow:
    ref = np.asarray(k_out, dtype=np.float64).reshape(got.shape)
    err = np.abs(got.astype(np.float64) - ref)
    mean_lsb = float(err.mean() / t.scale)
    max_lsb = float(err.max() / t.scale)
    judged = local[0] if local else mean_lsb
    return LayerRow(name, "compared", t.name, None, tuple(got.shape[1:]), t.scale, mean_lsb,
                    max_lsb, sqnr_db(ref, err), judged > threshold_lsb,
                    local[0] if local else None, local[1] if local else None)
