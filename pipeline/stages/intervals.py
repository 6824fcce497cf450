"""How sure the report's accuracy differences are: each model's test accuracy with its 95 %
Wilson interval, and QAT against the best PTQ on the same test samples (paired: Newcombe's
interval of the difference and McNemar's exact test, stages/stats.py).

``section(...)`` gives report.json's ``accuracy_ci95``, ``qat_vs_best_ptq`` and
``ptq_calibration``; ``markdown(...)`` the report.md section. "Best PTQ" is the most accurate
post-training variant on the test split (ptq_int8 first on a tie): picking it on the test split
flatters PTQ, so a claim that QAT is not worse is, if anything, conservative.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.records import Variant
from pipeline.stages import peers, stats


def correct(outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample top-1 correctness."""
    return np.argmax(outputs, axis=-1) == np.asarray(y)


def io_types(view) -> str:
    """The input/output tensor types of a .tflite (a TFLiteModel): "int8", "float32", or
    "float32 in / int8 out" when they differ (a model that keeps float I/O has QUANTIZE /
    DEQUANTIZE at its edges)."""
    kinds = [t[0].dtype.lower() if t else "none" for t in (view.inputs(), view.outputs())]
    return kinds[0] if kinds[0] == kinds[1] else f"{kinds[0]} in / {kinds[1]} out"


def _row(name: str, right: np.ndarray, float_acc: float, **extra) -> dict:
    k, n = int(np.sum(right)), int(len(right))
    lo, hi = stats.wilson(k, n)
    acc = k / n if n else float("nan")
    return {"model": name, "correct": k, "samples": n, "accuracy": acc, "ci95": [lo, hi],
            "delta_vs_float_pp": 100 * (acc - float_acc), **extra}


def rows(report) -> list[dict]:
    """Keras float, Keras QAT, then every .tflite (size, agreement with its Keras source,
    I/O types, full-int8)."""
    y = report.inputs.dataset.y_test
    fl = report.floats.accuracy
    out = [_row("keras_float", correct(report.floats.score.outputs, y), fl)]
    ver = report.verified
    if ver is None:
        return out
    out.append(_row("keras_qat", correct(ver.keras_qat.outputs, y), fl))
    for variant, res in ver.variants.items():
        agree = ver.agreement.get(variant)
        conv = report.conv.by_variant.get(variant) if report.conv else None
        out.append(_row(variant.value, correct(ver.scored[variant].outputs, y), fl,
                        size_bytes=res.size_bytes, full_int8=res.full_int8,
                        io=io_types(conv.model) if conv else None, peer=variant.is_peer,
                        agreement=agree.top1_agreement if agree else None,
                        agreement_with=agree.reference if agree else None))
    return out


def ptq_candidates(ver) -> list[Variant]:
    """The PTQ variants QAT is compared with: those at QAT's own precision, and of those the
    full-integer ones when there are any (a peer that leaves ops float, e.g. aeq_w4a8_mse's
    float pooling, is not a model at that precision; it is reported, not compared)."""
    scored = ver.scored if ver else {}
    ptq = Variant.ptq_like(scored, Variant.qat_of(scored))
    full = [v for v in ptq if v in ver.variants and ver.variants[v].full_int8]
    return full or ptq


def best_ptq(report) -> Variant | None:
    ver = report.verified
    ptq = ptq_candidates(ver)
    return max(ptq, key=lambda v: (ver.scored[v].accuracy, -list(Variant).index(v)),
               default=None)


def qat_vs_best_ptq(report) -> dict | None:
    """The QAT .tflite against the best PTQ .tflite on the same test samples."""
    best = best_ptq(report)
    ver = report.verified
    qat = Variant.qat_of(ver.scored)
    if best is None or qat is None:
        return None
    y = report.inputs.dataset.y_test
    fl = report.floats.accuracy
    q_right = correct(ver.scored[qat].outputs, y)
    p_right = correct(ver.scored[best].outputs, y)
    pair = stats.paired(qat.value, q_right, best.value, p_right)
    q_acc, p_acc = float(np.mean(q_right)), float(np.mean(p_right))
    p_lo, _ = stats.wilson(int(p_right.sum()), len(p_right))
    loss = 100 * (fl - p_acc)
    return {"qat": qat.value, "precision": qat.precision, "best_ptq": best.value,
            "ptq_accuracies": {v.value: ver.scored[v].accuracy
                               for v in Variant.ptq_like(ver.scored, qat)},
            "ptq_compared": [v.value for v in ptq_candidates(ver)],
            "float_accuracy": fl, "qat_accuracy": q_acc, "best_ptq_accuracy": p_acc,
            "ptq_loss_pp": loss, "qat_loss_pp": 100 * (fl - q_acc),
            # share of the best PTQ's loss that QAT wins back (only when PTQ loses something)
            "qat_recovery_pct": 100 * (q_acc - p_acc) / (fl - p_acc) if fl > p_acc else None,
            "qat_within_best_ptq_ci": q_acc >= p_lo,
            "qat_not_worse_beyond_ci": not pair.a_worse_beyond_ci,
            "paired": pair.to_dict(),
            # is the PTQ loss itself more than noise? the best PTQ vs Keras float, paired
            "best_ptq_vs_float": stats.paired(best.value, p_right, "keras_float",
                                              correct(report.floats.score.outputs, y)).to_dict()}


def calibration(report) -> dict | None:
    conv = report.conv
    if conv is None:
        return None
    ptq = [v.value for v in conv.by_variant if v.is_ptq]
    doc = {"samples": conv.calibration_samples, "variants": ptq,
           "converted_from": conv.float_graph,
           "source": "the train split, a seeded random sample (data.representative_sample), "
                     "the same samples for every PTQ variant"}
    for peer in peers.PEERS:
        if peer in conv.by_variant:
            doc[peer.value] = peers.describe(conv.calibration_samples, peer)
    if conv.failed_peers:
        doc["failed_peers"] = dict(conv.failed_peers)
    return doc


def section(report) -> dict:
    """report.json's keys of this section."""
    return {"accuracy_ci95": {"interval": stats.INTERVAL, "rows": rows(report)},
            "qat_vs_best_ptq": qat_vs_best_ptq(report) if report.verified else None,
            "ptq_calibration": calibration(report)}


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def markdown(report) -> list[str]:
    """report.md's section: the accuracy table with intervals, QAT vs the best PTQ."""
    lines = ["## Accuracy with 95 % intervals", "",
             "| model | correct / n | accuracy | 95 % CI | Δ vs float (pp) | agreement | "
             "size (bytes) | I/O | full-int8 |", "|---|---:|---:|---|---:|---:|---:|---|---|"]
    for r in rows(report):
        fi8 = r.get("full_int8")
        size = r.get("size_bytes")
        agree = _pct(r["agreement"]) + f" vs {r['agreement_with']}" \
            if r.get("agreement") is not None else "—"
        peer = " (peer)" if r.get("peer") else ""
        lines.append(f"| {r['model']}{peer} | {r['correct']} / {r['samples']} | "
                     f"{_pct(r['accuracy'])} | {_pct(r['ci95'][0])} – {_pct(r['ci95'][1])} | "
                     f"{r['delta_vs_float_pp']:+.2f} | {agree} | "
                     f"{'—' if size is None else f'{size:,}'} | {r.get('io') or '—'} | "
                     f"{'—' if fi8 is None else ('yes' if fi8 else '**no**')} |")
    lines += ["", f"Intervals: {stats.INTERVAL} (binomial proportion of the test split)."]
    lines += calibration_lines(report)
    cmp = qat_vs_best_ptq(report) if report.verified else None
    if cmp:
        lines += ["", _comparison_line(cmp)]
    return lines + [""]


def calibration_lines(report) -> list[str]:
    """report.md's lines on the PTQ calibration and the PTQ peer."""
    lines = []
    cal = calibration(report)
    if cal and cal["variants"]:
        lines.append(f"PTQ calibration: {', '.join(cal['variants'])} on the same "
                     f"{cal['samples']} training samples.")
        for a in (cal[p.value] for p in peers.PEERS if p.value in cal):
            lines.append(f"`{a['variant']}`: {a['tool']} {a['version']} `{a['recipe']}` on "
                         f"float32.tflite ({a['calibration']}); compared, not gated on.")
    for name, why in (cal or {}).get("failed_peers", {}).items():
        lines.append(f"`{name}` could not be made: {why}")
    return lines


def _comparison_line(c: dict) -> str:
    p = c["paired"]
    lo, hi = p["ci95"]
    text = (f"QAT (`{c['qat']}`) vs the best PTQ at its precision, {c['precision']} "
            f"(`{c['best_ptq']}`), paired on the same "
            f"{p['samples']} test samples: {100 * p['difference']:+.2f} pp "
            f"(95 % CI {100 * lo:+.2f} to {100 * hi:+.2f} pp, {stats.PAIRED_INTERVAL}; "
            f"McNemar exact p = {p['mcnemar_p']:.3g}; only QAT right on {p['only_a_right']}, "
            f"only {c['best_ptq']} right on {p['only_b_right']}). ")
    if c["ptq_loss_pp"] > 0 and c["qat_recovery_pct"] is not None:
        text += (f"PTQ loses {c['ptq_loss_pp']:.2f} pp vs float; QAT recovers "
                 f"{c['qat_recovery_pct']:.0f} % of it.")
    else:
        text += "PTQ loses nothing vs float here."
    left = [f"`{v}`" for v in c["ptq_accuracies"] if v not in c["ptq_compared"]]
    if left:
        text += (f" Not compared: {', '.join(left)} (not full-integer: it keeps float ops; "
                 "its row above).")
    return text + (" QAT is not worse beyond the interval." if c["qat_not_worse_beyond_ci"]
                   else " **QAT is worse beyond the interval.**")
