"""Convert stage: Keras -> .tflite variants, each inspected after conversion.

- ``float32``: the float model as is (the accuracy and latency baseline).
- ``ptq_int8``: full-integer post-training quantization of the float model, calibrated on a
  representative sample of the train split.
- ``aeq_int8``: the PTQ peer, ai-edge-quantizer's static int8 quantization of float32.tflite
  on the same calibration samples (stages/peers.py).
- ``qat_int8``: the QAT model; its fake-quant ranges become the int8 parameters. The
  representative data calibrates anything QAT did not cover.

Int8 variants get int8 input and output tensors by default (an app feeds int8 directly);
``io="float"`` keeps float I/O with QUANTIZE/DEQUANTIZE at the edges.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass

import numpy as np

from pipeline.core import keras_env
from pipeline.core.errors import ConversionError
from pipeline.core.native import quiet_native_output
from pipeline.core.records import Variant
from pipeline.stages import peers
from pipeline.tflite.tflite_model import TFLiteModel
from pipeline.tflite.verdict import Verdict


@dataclass(frozen=True)
class Converted:
    variant: Variant
    content: bytes
    model: TFLiteModel
    verdict: Verdict | None  # None for float32 (not meant to be int8)
    seconds: float
    islands: object | None = None       # islands.IslandReport when layers were kept float
    islands_only: bool | None = None    # not full-int8 only because of those islands

    @property
    def size(self) -> int:
        return len(self.content)


def _representative(x):
    """One sample per step. ``x``: an array, or {input name: array} for a model with several
    inputs (the converter matches a dict to the signature's input names)."""
    def typed(a: np.ndarray) -> np.ndarray:
        # float data is fed as float32; integer inputs (token ids) keep their integer type
        return a if a.dtype.kind in "iu" else a.astype(np.float32)

    if isinstance(x, dict):
        arrays = {k: typed(np.asarray(v)) for k, v in x.items()}
        n = len(next(iter(arrays.values())))

        def gen_named():
            for i in range(n):
                yield {k: v[i: i + 1] for k, v in arrays.items()}
        return gen_named
    x = typed(x)

    def gen():
        for i in range(len(x)):
            yield [x[i: i + 1]]
    return gen


def to_tflite(model, variant: Variant, representative: np.ndarray | None = None,
              io: str = "int8") -> bytes:
    """Run the TFLite converter for one variant and return the flatbuffer bytes."""
    tf = keras_env.load().tf
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant.is_int8:
        if representative is None or len(representative) == 0:
            raise ConversionError(f"{variant.value} needs a representative dataset",
                                  "0 samples", "Set convert.representative_samples >= 1")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(representative)
        # Builtin integer kernels only: conversion fails instead of silently keeping float ops.
        sixteen = variant.activations == "int16"
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            if sixteen else tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io == "int8":  # integer I/O: int16 for 16x8
            converter.inference_input_type = tf.int16 if sixteen else tf.int8
            converter.inference_output_type = tf.int16 if sixteen else tf.int8
    try:
        with warnings.catch_warnings(), quiet_native_output():
            # "Statistics for quantized inputs were expected": benign for QAT models, whose
            # input range comes from the QuantizeLayer (tensorflow#46006).
            warnings.simplefilter("ignore", UserWarning)
            return bytes(converter.convert())
    except Exception as exc:  # ConverterError and friends carry MLIR diagnostics
        lines = [l for l in str(exc).splitlines() if "error" in l.lower()] or \
            str(exc).splitlines() or [type(exc).__name__]
        layer = blamed_layer(str(exc), model)
        where = f" at layer {layer[0]} ({layer[1]})" if layer else ""
        fix = (f"Rebuild layer {layer[0]} from ops that are TFLite builtins with int8 kernels"
               if layer else "Check the model's ops are TFLite builtins with int8 kernels")
        if "16x8" in lines[0]:  # e.g. HARD_SWISH has no 16x8 kernel in TF 2.21
            fix = ("Drop ptq_16x8 for this model (the converter has no 16x8 kernel for that "
                   "op); `qat plan --ptq` raises single ops to 16x8 instead")
        raise ConversionError(f"The TFLite converter failed for {variant.value}{where}",
                              lines[0].strip()[:300], fix)


def blamed_layer(text: str, model) -> tuple[str, str] | None:
    """(name, class) of the model's layer the converter's error is about: the first layer
    its diagnostics' TensorFlow op locations (``<model>/<layer or quant_layer>/<op>``) name,
    else the layer whose traced graph holds the op the error names (``'tf.Digamma' op``)."""
    found = _first_layer_in(text, model)
    if found is None:
        ops = set(re.findall(r"'tf\.(\w+)' op", text))
        if ops:
            found = _first_layer_in(" ".join(f"/{n}" for n in _op_names(model, ops)), model)
    return found


def _first_layer_in(text: str, model) -> tuple[str, str] | None:
    first = None
    for l in model.layers:
        inner = getattr(l, "layer", l)  # a QuantizeWrapper's layer
        for token in (f"/{l.name}/", f"/{inner.name}/"):
            at = text.find(token)
            if at >= 0 and (first is None or at < first[0]):
                first = (at, inner.name, type(inner).__name__)
    return first[1:] if first else None


def _op_names(model, op_types: set[str]) -> list[str]:
    """Names (``<model>/<layer>/<op>``) of the ops of these types in ``model``'s traced
    inference graph."""
    tf = keras_env.load().tf
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
    try:
        graph = fn.get_concrete_function(*specs).graph
    except Exception:  # only to name a layer in an error already being raised
        return []
    return [op.name for op in graph.get_operations() if op.type in op_types]


def convert(variant: Variant, model, *, representative: np.ndarray | None = None,
            io: str = "int8", float_tflite: bytes | None = None,
            aeq_recipe: list | None = None) -> Converted:
    """One variant of ``model`` (the float model; the QAT model for qat_int8 / qat_w4a8,
    whose file must hold INT4 weights exactly when it is the 4-bit one). The peer
    aeq_int8 is made from ``float_tflite`` (the float32 variant's bytes; converted here when
    not given) by ai-edge-quantizer (stages/peers.py), which picks its own I/O types;
    aeq_mixed with ``aeq_recipe``, its per-op recipe."""
    t0 = time.perf_counter()
    if variant.is_peer:
        if float_tflite is None:
            float_tflite = to_tflite(model, Variant.FLOAT32)
        content = peers.quantize(float_tflite, representative, variant,
                                 recipe=aeq_recipe if variant is Variant.AEQ_MIXED else None)
    else:
        content = to_tflite(model, variant, representative, io)
    seconds = time.perf_counter() - t0
    view = TFLiteModel.from_bytes(content, source=variant.filename)
    if variant.is_qat:
        check_weight_bits(variant, view)
    elif variant.weight_bits == 4 and not view.size_breakdown().get("int4_weights", 0):
        raise ConversionError(f"{variant}: {peers.PACKAGE} wrote no INT4 weight tensor",
                              f"{view.file_size:,} bytes, no INT4 tensor",
                              f"Drop {variant} for this model")
    # a weight-only file is judged as int8 too: "no", its activations are float by design
    judged = variant.activations if variant.activations in ("int16", "mixed") else "int8"
    verdict = view.verdict(allow_float_io=(io == "float"), activations=judged) \
        if variant.is_int8 else None
    return Converted(variant, content, view, verdict, seconds)


def check_weight_bits(variant: Variant, view: TFLiteModel) -> None:
    """A QAT model's weight bits are fixed by its fake-quantizers, not by the variant's name:
    qat_w4a8 must hold INT4 weight tensors, qat_int8 none (then the user named the wrong one)."""
    int4 = view.size_breakdown().get("int4_weights", 0)
    if variant.weight_bits == 4 and not int4:
        raise ConversionError(f"{variant} needs a QAT model with 4-bit weights",
                              "the converted file has no INT4 weight tensor",
                              "Train it as qat_w4a8 (convert.variants = [..., 'qat_w4a8']), or "
                              "convert this 8-bit QAT model as qat_int8")
    if variant.weight_bits == 8 and int4:
        raise ConversionError(f"{variant} needs a QAT model with 8-bit weights",
                              f"the converted file has {int4:,} bytes of INT4 weights",
                              "Convert this 4-bit QAT model as qat_w4a8")
