"""Quality gates: the checks that decide a run's exit code ([gates] in the config).

Each gate is a ``GateResult`` (name, passed, value, threshold, detail). The float gate is
checked on the float model before QAT (``float_gate``, ``stops_before_qat``); the others on
the verified variants (``evaluate``).
"""

from __future__ import annotations

import dataclasses

from pipeline.core.errors import ConfigError
from pipeline.core.records import Agreement, GateResult, Variant, VariantResult
from pipeline.stages.config import GatesConfig

_EPS_PP = 1e-9  # the accuracy drop is a difference of two fractions times 100: float noise


# the gates each task has: a gate outside its task's list must keep its default
_TASK_GATES = {
    "classification": ("max_accuracy_drop_pp", "min_agreement", "min_float_accuracy",
                       "agreement_tolerance_lsb"),
    "sequence": ("max_accuracy_drop_pp", "min_agreement", "min_float_accuracy",
                 "max_perplexity_increase_pct", "agreement_tolerance_lsb"),
    "regression": ("max_mse_increase_pct",),
}
_METRIC = {"classification": "top-1 accuracy", "sequence": "token accuracy and perplexity",
           "regression": "MSE / MAE"}


def check_task(g: GatesConfig, task: str) -> None:
    """Refuse a gate set for a task it does not fit (e.g. gates.max_perplexity_increase_pct
    for a classifier), before any training."""
    defaults = GatesConfig()
    for f in dataclasses.fields(GatesConfig):
        if f.name == "require_full_int8" or f.name in _TASK_GATES[task]:
            continue
        if getattr(g, f.name) != getattr(defaults, f.name):
            raise ConfigError(f"gates.{f.name} does not apply to a {task} model (its metric "
                              f"is {_METRIC[task]})", f"gates.{f.name} = {getattr(g, f.name)}",
                              f"Remove it, or use {', '.join('gates.' + k for k in _TASK_GATES[task])}"
                              " (or set data.task if the task was guessed wrong)")


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
    """``max_accuracy_drop_pp`` of the QAT .tflite (qat_int8 or qat_w4a8) vs the Keras float
    model, and ``min_agreement`` of it with the Keras QAT model."""
    drop = 100 * (float_acc - qat.accuracy)
    gates = [GateResult("max_accuracy_drop_pp", drop <= g.max_accuracy_drop_pp + _EPS_PP,
                        round(drop, 3), g.max_accuracy_drop_pp,
                        f"{qat.variant}.tflite lost too much accuracy vs float")]
    if agreement is not None:
        value = agreement.top1_agreement if agreement.top1_agreement_ties is None \
            else agreement.top1_agreement_ties
        ties = "exact ties" if not agreement.tolerance_lsb else \
            f"ties within {agreement.tolerance_lsb:g} output LSB"
        gates.append(GateResult("min_agreement", value >= g.min_agreement, round(value, 5),
                                g.min_agreement, f"Keras QAT and {qat.variant}.tflite disagree "
                                f"(top-1, {ties} counted as agreeing; strict argmax "
                                f"{100 * agreement.top1_agreement:.2f} %)"))
    return gates


def full_int8_gate(variant: Variant, res: VariantResult,
                   islands_only: bool | None = None) -> GateResult:
    """``require_full_int8`` for one int8 variant. ``islands_only`` is set when the policy
    kept layers float (annotate.keep_float): the variant then passes when those float
    islands are its only float parts."""
    reasons = "; ".join(res.full_int8_reasons)
    # a 16x8 variant is judged full-integer at its own precision (int16 activations)
    name = f"full_int8[{variant.value}]" if variant.activations == "int8" else \
        f"full_16x8[{variant.value}]"
    if islands_only is not None:
        return GateResult(name, bool(islands_only),
                          "int8 + requested float islands" if islands_only else False, True,
                          reasons)
    return GateResult(name, bool(res.full_int8), bool(res.full_int8), True, reasons)


def increase_gate(g: GatesConfig, task: str, increase_pct: float) -> GateResult:
    """``max_perplexity_increase_pct`` (sequence) or ``max_mse_increase_pct`` (regression)
    of the QAT .tflite vs the Keras float model."""
    key, what = (("max_perplexity_increase_pct", "perplexity") if task == "sequence" else
                 ("max_mse_increase_pct", "mean squared error"))
    bar = getattr(g, key)
    return GateResult(key, increase_pct <= bar + _EPS_PP, round(increase_pct, 3), bar,
                      f"the QAT .tflite's {what} rose too much vs float")


def evaluate(g: GatesConfig, float_acc: float, variants: dict[Variant, VariantResult],
             agreement: dict[Variant, Agreement],
             islands_only: dict[Variant, bool] | None = None, *, task: str = "classification",
             qat_increase_pct: float | None = None) -> list[GateResult]:
    """Every gate of a run that converted ``variants``, in report order: float accuracy,
    the QAT variant's accuracy drop and agreement (classification, sequence: per token), its
    perplexity / MSE increase vs float (``qat_increase_pct``: sequence, regression), then
    full-int8 per int8 variant of this pipeline (a PTQ peer such as aeq_int8 is reported,
    never gated on)."""
    islands_only = islands_only or {}
    gates = float_gate(g, float_acc) if task != "regression" else []
    which = Variant.qat_of(variants)  # qat_int8 or qat_w4a8
    qat = variants.get(which) if which is not None else None
    if qat is not None and task != "regression":
        gates += qat_gates(g, float_acc, qat, agreement.get(which))
    if qat is not None and task != "classification" and qat_increase_pct is not None:
        gates.append(increase_gate(g, task, qat_increase_pct))
    if g.require_full_int8:  # peers (aeq_int8) are compared, not gated on
        gates += [full_int8_gate(v, res, islands_only.get(v))
                  for v, res in variants.items() if v.is_int8 and not v.is_peer]
    return gates


def passed(gates: list[GateResult]) -> bool:
    return all(g.passed for g in gates)
