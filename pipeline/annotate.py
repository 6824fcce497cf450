"""Annotate stage: mark layers for quantization and apply tfmot's default 8-bit QAT scheme.

``apply(model)`` annotates the whole model (``quantize_annotate_model``) and calls
``quantize_apply``. ``policy`` is the seam for selective QAT: a callable deciding per layer
whether it is annotated (layers it rejects stay float).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.errors import ConversionError


@dataclass(frozen=True)
class AnnotationSummary:
    layers_total: int
    layers_quantized: int
    params_total: int
    params_quantized: int
    quantized_layers: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"layers_total": self.layers_total, "layers_quantized": self.layers_quantized,
                "params_total": self.params_total, "params_quantized": self.params_quantized,
                "quantized_layers": list(self.quantized_layers)}


def apply(model, policy: Callable[[object], bool] | None = None):
    """Return (qat_model, summary). The float model is left untouched."""
    from pipeline import keras_env

    env = keras_env.load()
    q = env.tfmot.quantization.keras
    keras = env.keras
    try:
        if policy is None:
            annotated = q.quantize_annotate_model(model)
        else:
            annotated = keras.models.clone_model(
                model, clone_function=lambda layer: (q.quantize_annotate_layer(layer)
                                                     if policy(layer) else layer))
        with q.quantize_scope():
            qat_model = q.quantize_apply(annotated)
    except (RuntimeError, ValueError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError("tfmot could not annotate the model for QAT", msg[:300],
                              "Remove or replace the unsupported layer (see the message), or "
                              "exclude it with a policy")
    return qat_model, summarize(model, qat_model)


def summarize(float_model, qat_model) -> AnnotationSummary:
    wrapped = [l for l in qat_model.layers if type(l).__name__.startswith("QuantizeWrapper")]
    names = tuple(l.layer.name for l in wrapped)
    float_layers = [l for l in float_model.layers if type(l).__name__ != "InputLayer"]
    params_total = sum(int(l.count_params()) for l in float_layers)
    by_name = {l.name: l for l in float_layers}
    params_q = sum(int(by_name[n].count_params()) for n in names if n in by_name)
    return AnnotationSummary(len(float_layers), len(wrapped), params_total, params_q, names)
