"""Quality gates on constructed results: each gate passing and failing, at its threshold."""

import pytest

from pipeline.core.records import Agreement, GateResult, Variant, VariantResult
from pipeline.stages import gates
from pipeline.stages.config import GatesConfig

# the bundled recipe's gates (models/digits_cnn.toml)
G = GatesConfig(max_accuracy_drop_pp=0.5, min_agreement=0.995, require_full_int8=True,
                min_float_accuracy=0.97)


def variant(v: Variant, accuracy: float, full_int8: bool | None = True,
            reasons: tuple[str, ...] = ()) -> VariantResult:
    return VariantResult(v.value, v.filename, 10_000, accuracy, 450,
                         None if v is Variant.FLOAT32 else full_int8, reasons)


def agreement(top1: float) -> Agreement:
    return Agreement("keras_qat", "qat_int8", top1, 0.0, 0.0)


def by_name(results: list[GateResult]) -> dict[str, GateResult]:
    return {g.name: g for g in results}


def test_float_gate_passes_at_its_threshold_and_fails_just_below():
    (at,) = gates.float_gate(G, 0.97)
    assert at == GateResult("min_float_accuracy", True, 0.97, 0.97,
                            "the float model itself is below the bar")
    (below,) = gates.float_gate(G, 0.9699)
    assert not below.passed and below.value == 0.9699
    assert gates.float_gate(GatesConfig(min_float_accuracy=0.0), 0.1) == []


def test_float_gate_stops_the_run_before_qat_only_below_the_bar():
    assert not gates.stops_before_qat(G, 0.97)
    assert gates.stops_before_qat(G, 0.9699)
    assert not gates.stops_before_qat(GatesConfig(min_float_accuracy=0.0), 0.0)


def test_accuracy_drop_at_the_threshold_passes_despite_float_rounding():
    # 100 * (0.98 - 0.975) is 0.5000000000000004 in binary floating point
    assert 100 * (0.98 - 0.975) > 0.5
    (drop, agree) = gates.qat_gates(G, 0.98, variant(Variant.QAT_INT8, 0.975), agreement(0.995))
    assert drop.name == "max_accuracy_drop_pp" and drop.passed and drop.value == 0.5
    assert agree.name == "min_agreement" and agree.passed and agree.value == 0.995
    assert agree.detail.startswith("Keras QAT and qat_int8.tflite disagree")


def test_agreement_gate_reads_the_tie_counting_agreement_when_there_is_one():
    strict_only = Agreement("keras_qat", "qat_int8", 0.993, 0.0, 0.0)
    (_, agree) = gates.qat_gates(G, 0.98, variant(Variant.QAT_INT8, 0.98), strict_only)
    assert not agree.passed and agree.value == 0.993
    ties = Agreement("keras_qat", "qat_int8", 0.993, 0.0, 0.0, top1_agreement_ties=0.996,
                     tolerance_lsb=1.0)
    (_, agree) = gates.qat_gates(G, 0.98, variant(Variant.QAT_INT8, 0.98), ties)
    assert agree.passed and agree.value == 0.996
    assert "ties within 1 output LSB" in agree.detail and "strict argmax 99.30 %" in agree.detail


def test_accuracy_drop_and_agreement_fail_past_their_thresholds():
    drop, agree = gates.qat_gates(G, 0.98, variant(Variant.QAT_INT8, 0.9749), agreement(0.9949))
    assert not drop.passed and drop.value == pytest.approx(0.51, abs=1e-9)
    assert drop.detail == "qat_int8.tflite lost too much accuracy vs float"
    assert not agree.passed and agree.value == 0.9949
    # a QAT model better than the float one: a negative drop passes
    (gain,) = gates.qat_gates(G, 0.95, variant(Variant.QAT_INT8, 0.96), None)
    assert gain.passed and gain.value == pytest.approx(-1.0)


def test_full_int8_gate_passes_full_int8_and_names_the_reasons_otherwise():
    ok = gates.full_int8_gate(Variant.PTQ_INT8, variant(Variant.PTQ_INT8, 0.9))
    assert ok == GateResult("full_int8[ptq_int8]", True, True, True, "")
    bad = gates.full_int8_gate(Variant.QAT_INT8, variant(
        Variant.QAT_INT8, 0.9, False, ("float input", "DEQUANTIZE inside the graph")))
    assert bad == GateResult("full_int8[qat_int8]", False, False, True,
                             "float input; DEQUANTIZE inside the graph")


def test_full_int8_gate_accepts_requested_float_islands_and_nothing_else():
    mixed = variant(Variant.QAT_INT8, 0.9, False, ("float activation conv (t)",))
    ok = gates.full_int8_gate(Variant.QAT_INT8, mixed, islands_only=True)
    assert ok.passed and ok.value == "int8 + requested float islands"
    bad = gates.full_int8_gate(Variant.QAT_INT8, mixed, islands_only=False)
    assert not bad.passed and bad.value is False and bad.detail == "float activation conv (t)"


def test_evaluate_orders_the_gates_and_skips_float32():
    # a run's variants: one QAT variant (config.ConvertConfig refuses two)
    variants = {v: variant(v, 0.98) for v in Variant if v is not Variant.QAT_W4A8}
    results = gates.evaluate(G, 0.985, variants, {Variant.QAT_INT8: agreement(1.0)})
    assert [g.name for g in results] == ["min_float_accuracy", "max_accuracy_drop_pp",
                                         "min_agreement", "full_int8[ptq_int8]",
                                         "full_int8[qat_int8]", "full_16x8[ptq_16x8]"]
    assert gates.passed(results)


def test_evaluate_without_qat_int8_has_no_drop_or_agreement_gate():
    variants = {Variant.PTQ_INT8: variant(Variant.PTQ_INT8, 0.5, False, ("hybrid op FC",))}
    results = by_name(gates.evaluate(G, 0.98, variants, {}))
    assert set(results) == {"min_float_accuracy", "full_int8[ptq_int8]"}
    assert results["min_float_accuracy"].passed and not results["full_int8[ptq_int8]"].passed
    assert not gates.passed(list(results.values()))


def test_evaluate_without_require_full_int8_and_with_islands():
    variants = {Variant.QAT_INT8: variant(Variant.QAT_INT8, 0.98, False, ("island",))}
    off = GatesConfig(require_full_int8=False)
    assert [g.name for g in gates.evaluate(off, 0.98, variants, {})] == \
        ["max_accuracy_drop_pp"]
    on = by_name(gates.evaluate(G, 0.98, variants, {}, {Variant.QAT_INT8: True}))
    assert on["full_int8[qat_int8]"].passed
    assert gates.passed([]) and not gates.passed(
        [GateResult("x", True, 1, 1), GateResult("y", False, 0, 1)])


def test_a_4bit_run_gates_qat_w4a8_and_skips_its_peer():
    variants = {v: variant(v, 0.98) for v in (Variant.FLOAT32, Variant.AEQ_W4A8,
                                              Variant.QAT_W4A8)}
    variants[Variant.QAT_W4A8] = variant(Variant.QAT_W4A8, 0.97)
    results = by_name(gates.evaluate(G, 0.985, variants, {Variant.QAT_W4A8: agreement(0.9)}))
    assert set(results) == {"min_float_accuracy", "max_accuracy_drop_pp", "min_agreement",
                            "full_int8[qat_w4a8]"}
    assert not results["max_accuracy_drop_pp"].passed  # 1.5 pp, the 4-bit file's own
    assert "qat_w4a8.tflite" in results["max_accuracy_drop_pp"].detail
    assert results["min_agreement"].value == 0.9 and not results["min_agreement"].passed


def test_a_ptq_peer_is_reported_not_gated_on():
    variants = {v: variant(v, 0.98) for v in Variant if v is not Variant.QAT_W4A8}
    variants[Variant.AEQ_INT8] = variant(Variant.AEQ_INT8, 0.5, False, ("float input",))
    results = gates.evaluate(G, 0.985, variants, {Variant.QAT_INT8: agreement(1.0)})
    assert "full_int8[aeq_int8]" not in by_name(results) and gates.passed(results)
