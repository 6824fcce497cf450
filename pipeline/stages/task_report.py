"""The report's metric section for sequence and regression models (classifiers keep
stages/intervals.py's accuracy table with Wilson intervals).

report.json gets ``task_metrics`` - one row per model (Keras float, Keras QAT, each .tflite)
with the task's metrics and their 95 % intervals (stages/metrics.py: bootstrap over sequences /
samples, seeded), the change vs float, per-token agreement and output error vs its Keras source
- and ``qat_vs_best_ptq`` in the task's metric: "best PTQ" is the post-training variant with
the lowest perplexity (sequence) or MSE (regression) on the test split; each increase is paired
on the same sequences / samples (metrics.paired_increase).
"""

from __future__ import annotations

from pipeline.core.records import Variant
from pipeline.stages import intervals, metrics

_KEY = {"sequence": "perplexity", "regression": "mse"}


def _conv_info(report, variant) -> dict:
    res = report.verified.variants[variant]
    conv = report.conv.by_variant.get(variant) if report.conv else None
    agree = report.verified.agreement.get(variant)
    tok = next((t for t in report.verified.per_token if t["candidate"] == variant.value), None)
    return {"size_bytes": res.size_bytes, "full_int8": res.full_int8,
            "io": intervals.io_types(conv.model) if conv else None, "peer": variant.is_peer,
            "agreement": agree.top1_agreement if agree else None,
            "agreement_with": agree.reference if agree else None,
            "mean_error_lsb": agree.mean_error_lsb if agree else None,
            "max_error_lsb": agree.max_error_lsb if agree else None, "per_token": tok}


def rows(report) -> list[dict]:
    task = report.inputs.task.kind
    key = _KEY[task]
    base = report.floats.score.metrics[key]
    scored = [("keras_float", report.floats.score, None)]
    if report.verified:
        scored.append(("keras_qat", report.verified.keras_qat, None))
        scored += [(v.value, s, v) for v, s in report.verified.scored.items()]
    out = []
    for name, s, variant in scored:
        row = {"model": name, **s.metrics,
               f"{key}_increase_vs_float_pct": 100 * (s.metrics[key] / base - 1) if base
               else None}
        if task == "sequence":
            row["token_accuracy_delta_vs_float_pp"] = 100 * (
                s.metrics["token_accuracy"] - report.floats.score.metrics["token_accuracy"])
        if variant is not None:
            row.update(_conv_info(report, variant))
        out.append(row)
    return out


def best_ptq(report) -> Variant | None:
    key = _KEY[report.inputs.task.kind]
    ver = report.verified
    ptq = intervals.ptq_candidates(ver)  # at QAT's precision, full-integer when any is
    return min(ptq, key=lambda v: (ver.scored[v].metrics[key], list(Variant).index(v)),
               default=None)


def qat_vs_best_ptq(report) -> dict | None:
    """qat_int8 vs the best PTQ .tflite and both vs Keras float, paired, in the task's
    metric (% increase of perplexity or MSE)."""
    best, ver = best_ptq(report), report.verified
    qat = Variant.qat_of(ver.scored)
    if best is None or qat is None:
        return None
    task = report.inputs.task
    y = report.inputs.dataset.y_test
    q, p, f = ver.scored[qat], ver.scored[best], report.floats.score

    def inc(a, b):
        return metrics.paired_increase(task.kind, a.outputs, b.outputs, y, task.from_logits)
    q_vs_f, p_vs_f, q_vs_p = inc(q, f), inc(p, f), inc(q, p)
    ptq_inc, qat_inc = p_vs_f["increase_pct"], q_vs_f["increase_pct"]
    key = _KEY[task.kind]
    return {"metric": key, "qat": qat.value, "precision": qat.precision, "best_ptq": best.value,
            "ptq_values": {v.value: ver.scored[v].metrics[key]
                           for v in Variant.ptq_like(ver.scored, qat)},
            "float_value": f.metrics[key], "qat_value": q.metrics[key],
            "best_ptq_value": p.metrics[key],
            "qat_increase_vs_float": q_vs_f, "best_ptq_increase_vs_float": p_vs_f,
            "qat_vs_best_ptq": q_vs_p,
            # share of the best PTQ's increase that QAT wins back (when PTQ loses something)
            "qat_recovery_pct": 100 * (ptq_inc - qat_inc) / ptq_inc if ptq_inc > 0 else None,
            "qat_not_worse_beyond_ci": q_vs_p["ci95"][0] <= 0}


def section(report) -> dict:
    return {"task": report.inputs.task.kind, "interval": metrics.BOOTSTRAP,
            "output": report.inputs.task.output or None, "rows": rows(report),
            "other_outputs": [a.to_dict() for a in report.verified.other_outputs]
            if report.verified else []}


def _f(v, p=4) -> str:
    return "—" if v is None else f"{v:.{p}g}"


def _ci(pair, p=4) -> str:
    return "—" if not pair or pair[0] is None else f"{pair[0]:.{p}g} – {pair[1]:.{p}g}"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def markdown(report) -> list[str]:
    task = report.inputs.task.kind
    key = _KEY[task]
    if task == "sequence":
        lines = ["## Sequence metrics with 95 % intervals", "",
                 "| model | token accuracy | 95 % CI | nats/token | perplexity | 95 % CI | "
                 "Δ perplexity vs float | agreement per token | mean / max token error (LSB) "
                 "| size (bytes) | full-int8 |",
                 "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---|"]
    else:
        lines = ["## Regression metrics with 95 % intervals", "",
                 "| model | MSE | 95 % CI | MAE | 95 % CI | Δ MSE vs float | agreement "
                 "(mean / max error, LSB) | size (bytes) | full-int8 |",
                 "|---|---:|---|---:|---|---:|---|---:|---|"]
    for r in rows(report):
        inc = r.get(f"{key}_increase_vs_float_pct")
        inc = "—" if inc is None else f"{inc:+.2f} %"
        size = "—" if r.get("size_bytes") is None else f"{r['size_bytes']:,}"
        fi8 = r.get("full_int8")
        fi8 = "—" if fi8 is None else ("yes" if fi8 else "**no**")
        name = r["model"] + (" (peer)" if r.get("peer") else "")
        if task == "sequence":
            tok = r.get("per_token") or {}
            err = "—" if tok.get("mean_token_max_error_lsb") is None else \
                f"{tok['mean_token_max_error_lsb']:.2f} / {tok['max_token_error_lsb']:.0f}"
            lines.append(f"| {name} | {_pct(r['token_accuracy'])} | "
                         f"{_pct(r['token_accuracy_ci95'][0])} – "
                         f"{_pct(r['token_accuracy_ci95'][1])} | {_f(r['cross_entropy'])} | "
                         f"{_f(r['perplexity'])} | {_ci(r['perplexity_ci95'])} | {inc} | "
                         f"{_pct(r.get('agreement'))} | {err} | {size} | {fi8} |")
        else:
            err = "—" if r.get("mean_error_lsb") is None else \
                f"{r['mean_error_lsb']:.2f} / {r['max_error_lsb']:.0f}"
            lines.append(f"| {name} | {_f(r['mse'])} | {_ci(r['mse_ci95'])} | {_f(r['mae'])} | "
                         f"{_ci(r['mae_ci95'])} | {inc} | {err} | {size} | {fi8} |")
    unit = "sequences" if task == "sequence" else "samples"
    lines += ["", f"Intervals: {metrics.BOOTSTRAP} (the {unit} of the test split are "
              "resampled, not single tokens). Agreement and token errors: each `.tflite` vs "
              "its Keras source (qat_int8 vs Keras QAT, the others vs Keras float); a token's "
              "error is its largest logit difference, in LSB of the output scale."
              if task == "sequence" else
              f"Intervals: {metrics.BOOTSTRAP}. Errors: each `.tflite`'s outputs vs its Keras "
              "source, in LSB of its output scale."]
    lines += intervals.calibration_lines(report)
    cmp = qat_vs_best_ptq(report) if report.verified else None
    if cmp:
        lines += ["", _comparison_line(cmp)]
    return lines + [""]


def _comparison_line(c: dict) -> str:
    def inc(d):
        lo, hi = d["ci95"]
        return f"{d['increase_pct']:+.2f} % (95 % CI {lo:+.2f} to {hi:+.2f} %)"
    what = "perplexity" if c["metric"] == "perplexity" else "MSE"
    text = (f"QAT vs the best PTQ (`{c['best_ptq']}`) in {what}, paired on the same "
            f"{c['qat_vs_best_ptq']['samples']} test "
            f"{'sequences' if what == 'perplexity' else 'samples'}: QAT vs float "
            f"{inc(c['qat_increase_vs_float'])}; {c['best_ptq']} vs float "
            f"{inc(c['best_ptq_increase_vs_float'])}; QAT vs {c['best_ptq']} "
            f"{inc(c['qat_vs_best_ptq'])}.")
    if c["qat_recovery_pct"] is not None:
        text += f" QAT recovers {c['qat_recovery_pct']:.0f} % of PTQ's increase."
    return text + (" QAT is not worse beyond the interval." if c["qat_not_worse_beyond_ci"]
                   else " **QAT is worse beyond the interval.**")
