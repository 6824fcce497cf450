"""Shared small types: variant and runtime names, quantization parameters, metric records.

Frozen dataclasses and enums only, no TensorFlow; every machine-readable output built from them
carries ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

import numpy as np

SCHEMA_VERSION = 1


class Variant(str, enum.Enum):
    """The .tflite variants a run produces, in report order: the float baseline, the
    post-training quantizations (the TFLite converter's, then ai-edge-quantizer's, a peer made
    from float32.tflite by another tool), the QAT model, the converter's 16x8 PTQ (int16
    activations, int8 weights), and the 4-bit-weight ones: ai-edge-quantizer's INT4-weight PTQ
    (min/max scales, and MSE-optimal scales) and QAT with 4-bit weights, then
    ai-edge-quantizer's weight-only INT4 (float activations: the weights are dequantized and
    the ops compute in float). QAT is compared with the PTQ of its own precision
    (``precision``): qat_int8 with ptq_int8 / aeq_int8, qat_w4a8 with aeq_w4a8 / aeq_w4a8_mse;
    the weight-only ones (w4afp32) are reported beside them, not compared."""

    FLOAT32 = "float32"
    PTQ_INT8 = "ptq_int8"
    AEQ_INT8 = "aeq_int8"
    QAT_INT8 = "qat_int8"
    PTQ_16X8 = "ptq_16x8"
    AEQ_W4A8 = "aeq_w4a8"  # ai-edge-quantizer: INT4 weights, int8 activations (a peer)
    QAT_W4A8 = "qat_w4a8"  # QAT with 4-bit weights: INT4 weight tensors, int8 activations
    AEQ_W4A8_MSE = "aeq_w4a8_mse"  # aeq_w4a8 with each weight scale chosen for least MSE
    AEQ_W4AFP32 = "aeq_w4afp32"  # ai-edge-quantizer weight-only: INT4 weights, float compute
    AEQ_W4AFP32_MSE = "aeq_w4afp32_mse"  # aeq_w4afp32 with MSE-optimal weight scales
    AEQ_MIXED = "aeq_mixed"  # ai-edge-quantizer with a per-op recipe (`qat plan --ptq`)

    @property
    def filename(self) -> str:
        return f"{self.value}.tflite"

    @property
    def is_int8(self) -> bool:
        """Quantized (int8 or int4 weights; int8, int16 or float activations): has a
        full-integer verdict (always "no" for a weight-only one, whose activations are float)."""
        return self is not Variant.FLOAT32

    @property
    def activations(self) -> str:
        """The type its activations should have: "int8", "int16" (16x8), "mixed" (int8 or
        int16 per op), "fp32" (a weight-only quantization) or "" (the float model)."""
        return {Variant.FLOAT32: "", Variant.PTQ_16X8: "int16", Variant.AEQ_W4AFP32: "fp32",
                Variant.AEQ_W4AFP32_MSE: "fp32", Variant.AEQ_MIXED: "mixed"}.get(self, "int8")

    @property
    def weight_bits(self) -> int:
        """Bits of its conv / fully-connected weights: 32 (float), 8 or 4."""
        return 4 if self in (Variant.AEQ_W4A8, Variant.QAT_W4A8, Variant.AEQ_W4A8_MSE,
                             Variant.AEQ_W4AFP32, Variant.AEQ_W4AFP32_MSE) else \
            32 if self is Variant.FLOAT32 else 8

    @property
    def precision(self) -> str:
        """"float", "w8a8", "w8a16", "w4a8", "w4afp32" (weight-only) or "mixed" (per op):
        which variants are compared with each other."""
        return "float" if self is Variant.FLOAT32 else "mixed" if self is Variant.AEQ_MIXED else \
            f"w{self.weight_bits}a{self.activations.removeprefix('int')}"

    @property
    def is_weight_only(self) -> bool:
        """Integer weights, float activations and compute (dequantized before each op)."""
        return self.activations == "fp32"

    @property
    def is_qat(self) -> bool:
        """Converted from the run's QAT model (one per run)."""
        return self in (Variant.QAT_INT8, Variant.QAT_W4A8)

    @property
    def is_ptq(self) -> bool:
        """Post-training quantized from the float model (no training): the PTQ that QAT of the
        same ``precision`` is compared with."""
        return self.is_int8 and not self.is_qat

    @property
    def is_peer(self) -> bool:
        """Made by another tool, for comparison: verified and reported, never gated on."""
        return self.value.startswith("aeq_")  # ai-edge-quantizer's

    @staticmethod
    def qat_of(variants) -> "Variant | None":
        """The QAT variant among ``variants`` (a run converts at most one), or None."""
        return next((v for v in variants if v.is_qat), None)

    @staticmethod
    def ptq_like(variants, qat: "Variant | None") -> list["Variant"]:
        """The PTQ variants among ``variants`` at ``qat``'s precision (int8's without one)."""
        want = (qat or Variant.QAT_INT8).precision
        return [v for v in variants if v.is_ptq and v.precision == want]

    def __str__(self) -> str:  # f-strings and messages show the name as written in configs
        return self.value

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(v.value for v in Variant)


# "auto": try the runtimes in Runtime's order and use the first that imports.
RUNTIME_AUTO = "auto"


class Runtime(str, enum.Enum):
    """The Python packages that run a .tflite, in the order ``auto`` tries them: LiteRT (the
    maintained package), tflite_runtime (its last release, 2.14, needs numpy<2), tf.lite
    (deprecated inside TensorFlow)."""

    LITERT = "litert"
    TFLITE_RUNTIME = "tflite_runtime"
    TENSORFLOW = "tensorflow"

    def __str__(self) -> str:
        return self.value

    @property
    def package(self) -> str:
        """The pip distribution that provides it."""
        return {"litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                "tensorflow": "tensorflow"}[self.value]

    @staticmethod
    def names(auto: bool = True, tensorflow: bool = True) -> tuple[str, ...]:
        """Names a user may pass (``auto`` first), e.g. for argparse choices and messages."""
        return ((RUNTIME_AUTO,) if auto else ()) + tuple(
            r.value for r in Runtime if tensorflow or r is not Runtime.TENSORFLOW)


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of one tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int
    dtype: str = "int8"  # numpy dtype name of the quantized tensor

    @property
    def is_quantized(self) -> bool:
        return self.scale != 0.0

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """round(x / scale) + zero_point, saturated, as TFLite's own QUANTIZE kernel does it
        (reference_ops::AffineQuantize: float32, std::round = half away from zero), in place
        on one temporary: this runs on every verified sample."""
        info = np.iinfo(self.dtype)
        v = np.divide(np.asarray(x, dtype=np.float32), np.float32(self.scale), dtype=np.float32)
        q = np.abs(v)
        q += np.float32(0.5)
        np.floor(q, out=q)
        np.copysign(q, v, out=q)
        q += np.float32(self.zero_point)
        np.clip(q, info.min, info.max, out=q)
        return q.astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        y = np.asarray(q).astype(np.float32)
        y -= np.float32(self.zero_point)
        y *= np.float32(self.scale)
        return y

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Agreement:
    """Numeric comparison of two models' outputs on the same inputs."""

    reference: str
    candidate: str
    top1_agreement: float
    mean_abs_error: float
    max_abs_error: float
    mean_error_lsb: float | None = None  # in units of the candidate's output scale
    max_error_lsb: float | None = None
    sqnr_db: float | None = None
    cosine: float | None = None
    samples: int = 0
    # top-1 agreement counting near-ties: the candidate's top class is one the reference
    # scores within ``tolerance_lsb`` output steps (candidate's scale) of its best (0: exact
    # ties on the int8 grid count, where argmax alone picks the lower index)
    top1_agreement_ties: float | None = None
    tolerance_lsb: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VariantResult:
    """One row of the report's variant table."""

    variant: str
    path: str | None
    size_bytes: int | None
    accuracy: float
    samples: int
    full_int8: bool | None = None
    full_int8_reasons: tuple[str, ...] = ()
    input_quant: QuantParams | None = None
    output_quant: QuantParams | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["full_int8_reasons"] = list(self.full_int8_reasons)
        return d


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float | bool | None
    threshold: float | bool
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)
