"""Quality gates: the checks that decide a run's exit code ([gates] in the config).

Each gate is a ``GateResult`` (name, passed, value, threshold, detail). The float gate is
checked on the float model before QAT (``float_gate``, ``stops_before_qat``); the others on
the verified variants (``evaluate``).
"""

from __future__ import annotations

from pipeline.core.records import Agreement, GateResult, Variant, VariantResult
from pipeline.stages.config import GatesConfig

_EPS_PP = 1e-9  # the accuracy drop is a difference of two fractions times 100: float noise


def stops_before_qat(g: GatesConfig, float_acc: float) -> bool:
    """A float model below ``min_float_accuracy`` stops the run before QAT and conversion."""
    return float_acc < g.min_float_accuracy


def float_gate(g: GatesConfig, float_acc: float) -> list[GateResult]:
    """``min_float_accuracy`` on the Keras float model's test accuracy (none when it is 0)."""
    if g.min_float_accuracy <= 0:
        return []
    return [GateResult("min_float_accuracy", float_acc >= g.min_float_accuracy,
                       round(float_acc, 4), g.min_float_accuracy,
                       "the float model itself is below the bar")]


def qat_gates(g: GatesConfig, float_acc: float, qat: VariantResult,
              agreement: Agreement | None) -> list[GateResult]:
    """``max_accuracy_drop_pp`` of qat_int8.tflite vs the Keras float model, and
    ``min_agreement`` of qat_int8.tflite with the Keras QAT model."""
    drop = 100 * (float_acc - qat.accuracy)
    gates = [GateResult("max_accuracy_drop_pp", drop <= g.max_accuracy_drop_pp + _EPS_PP,
                        round(drop, 3), g.max_accuracy_drop_pp,
                        "qat_int8.tflite lost too much accuracy vs float")]
    if agreement is not None:
        gates.append(GateResult("min_agreement", agreement.top1_agreement >= g.min_agreement,
                                round(agreement.top1_agreement, 5), g.min_agreement,
                                "Keras QAT and qat_int8.tflite disagree"))
    return gates


def full_int8_gate(variant: Variant, res: VariantResult,
                   islands_only: bool | None = None) -> GateResult:
    """``require_full_int8`` for one int8 variant. ``islands_only`` is set when the policy
    kept layers float (annotate.keep_float): the variant then passes when those float
    islands are its only float parts."""
    reasons = "; ".join(res.full_int8_reasons)
    if islands_only is not None:
        return GateResult(f"full_int8[{variant.value}]", bool(islands_only),
                          "int8 + requested float islands" if islands_only else False, True,
                          reasons)
    return GateResult(f"full_int8[{variant.value}]", bool(res.full_int8), bool(res.full_int8),
                      True, reasons)


def evaluate(g: GatesConfig, float_acc: float, variants: dict[Variant, VariantResult],
             agreement: dict[Variant, Agreement],
             islands_only: dict[Variant, bool] | None = None) -> list[GateResult]:
    """Every gate of a run that converted ``variants``, in report order: float accuracy,
    the QAT variant's accuracy drop and agreement, then full-int8 per int8 variant of this
    pipeline (a PTQ peer such as aeq_int8 is reported, never gated on)."""
    islands_only = islands_only or {}
    gates = float_gate(g, float_acc)
    qat = variants.get(Variant.QAT_INT8)
    if qat is not None:
        gates += qat_gates(g, float_acc, qat, agreement.get(Variant.QAT_INT8))
    if g.require_full_int8:  # peers (aeq_int8) are compared, not gated on
        gates += [full_int8_gate(v, res, islands_only.get(v))
                  for v, res in variants.items() if v.is_int8 and not v.is_peer]
    return gates


def passed(gates: list[GateResult]) -> bool:
    return all(g.passed for g in gates)
