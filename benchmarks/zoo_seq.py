"""The zoo's language models (sequence runs: per-token logits), for benchmarks/zoo.py.

Their report.json scores variants in the task's metric (``task_metrics``: token accuracy,
perplexity, each with a bootstrap interval over test windows) and compares QAT with the best
PTQ in perplexity (``qat_vs_best_ptq``). Targets, as the zoo states them for a language model:

- qat_int8.tflite's perplexity within 3 % of the Keras float model's;
- QAT not worse than the best PTQ beyond the interval (QAT − best PTQ perplexity, % of the
  best PTQ's, interval not entirely above 0);
- where the best PTQ's perplexity is above float beyond its interval, QAT recovers >= 80 %
  of that increase;
- no diverging layer (the run's layer parity);
- the run in <= 20 min.

Host latency of a window is the latency per generated token (one invoke per token: the
sliding-window generation of pipeline/tflite/generate.py).
"""

from __future__ import annotations

MAX_PPL_INCREASE_PCT = 3.0
MIN_RECOVERY_PCT = 80.0
RUN_BUDGET_S = 20 * 60


def is_sequence(report: dict) -> bool:
    return bool(report.get("task_metrics")) and \
        report["task_metrics"].get("task") == "sequence"


def rows(name: str, report: dict, latency: dict) -> list[dict]:
    """One row per .tflite variant: token accuracy, perplexity (each with its interval),
    increase vs float, per-token agreement, size, host p50 per token."""
    out = []
    for r in report["task_metrics"]["rows"]:
        if r.get("size_bytes") is None:  # the Keras rows
            continue
        t = latency.get(r["model"], {})
        out.append({"model": name, "variant": r["model"], "peer": bool(r.get("peer")),
                    "task": "sequence", "token_accuracy": r["token_accuracy"],
                    "token_accuracy_ci95": r["token_accuracy_ci95"],
                    "perplexity": r["perplexity"], "perplexity_ci95": r["perplexity_ci95"],
                    "perplexity_increase_vs_float_pct": r["perplexity_increase_vs_float_pct"],
                    "agreement": r.get("agreement"), "agreement_with": r.get("agreement_with"),
                    "size_bytes": r["size_bytes"], "io": r.get("io"),
                    "full_int8": r.get("full_int8"), "host_p50_us_per_token": t.get("p50_us"),
                    "host_ratio_to_float32": t.get("ratio_to_float32")})
    return out


def summary(name: str, report: dict, run: dict, parity: dict | None, cpu) -> dict:
    cmp = report.get("qat_vs_best_ptq") or {}
    return {"model": name, "task": "sequence", "status": report["status"],
            "exit_code": run.get("exit_code"), "float_perplexity": cmp.get("float_value"),
            "best_ptq": cmp.get("best_ptq"), "best_ptq_perplexity": cmp.get("best_ptq_value"),
            "qat_perplexity": cmp.get("qat_value"),
            "best_ptq_increase": cmp.get("best_ptq_increase_vs_float"),
            "qat_increase": cmp.get("qat_increase_vs_float"),
            "qat_vs_best_ptq": cmp.get("qat_vs_best_ptq"),
            "qat_recovery_pct": cmp.get("qat_recovery_pct"),
            "qat_not_worse_beyond_ci": cmp.get("qat_not_worse_beyond_ci"),
            "ptq_calibration": report.get("ptq_calibration"), "layer_parity": parity,
            "text_samples": report.get("text_samples"),
            "test_samples": report["data"]["test"], "train_samples": report["data"]["train"],
            "pipeline_seconds": run.get("seconds"), "harness_seconds": run.get("harness_seconds"),
            "cpu": cpu}


def _ci(d: dict | None) -> str:
    if not d:
        return "—"
    return f"{d['increase_pct']:+.1f} % [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"


def parity_target(model: str, lp: dict | None, make_target) -> dict:
    """No diverging layer in qat_int8.tflite, from the run's report.json (every zoo model)."""
    return make_target(model, "no diverging layer (layer parity)",
                       bool(lp and lp["compared"] and not lp["first_divergent"]),
                       "no layer parity in the run" if not lp else
                       (f"{lp['compared']} layers within {lp['threshold_lsb']} LSB mean"
                        if not lp["first_divergent"] else
                        f"first divergent layer {lp['first_divergent']}")
                       + " (from the run's report.json)")


# long: one check per target, in the order the module docstring states them
def targets(s: dict, make_target) -> list[dict]:
    m, out = s["model"], []
    qi, pi = s["qat_increase"], s["best_ptq_increase"]
    if qi is None:
        return [make_target(m, "QAT perplexity within 3 % of float", False, "no qat_int8")]
    out.append(make_target(m, "QAT perplexity within 3 % of float",
                           qi["increase_pct"] <= MAX_PPL_INCREASE_PCT,
                           f"qat_int8 vs Keras float: {_ci(qi)}"))
    out.append(make_target(m, "QAT not worse than best PTQ beyond CI",
                           bool(s["qat_not_worse_beyond_ci"]),
                           f"QAT vs {s['best_ptq']}: {_ci(s['qat_vs_best_ptq'])} perplexity"))
    name = "QAT recovers >= 80 % of the PTQ loss"
    if not pi or pi["ci95"][0] <= 0:
        out.append(make_target(m, name, None, f"PTQ's perplexity increase is within noise or "
                               f"none: {s['best_ptq']} {_ci(pi)}", "n/a"))
    else:
        rec = s["qat_recovery_pct"]
        out.append(make_target(m, name, rec is not None and rec >= MIN_RECOVERY_PCT,
                               f"{s['best_ptq']} {_ci(pi)}; QAT recovers {rec:.0f} %"))
    out.append(parity_target(m, s["layer_parity"], make_target))
    secs = s.get("pipeline_seconds")
    out.append(make_target(m, "run <= 20 min", None if secs is None else secs <= RUN_BUDGET_S,
                           "not timed" if secs is None else f"{secs / 60:.1f} min",
                           "n/a"))
    return out


def markdown(rows_: list[dict], summaries: list[dict]) -> list[str]:
    if not rows_:
        return []
    pct = (lambda v: "—" if v is None else f"{100 * v:.2f}")
    lines = ["", "## Language models", "",
             "| model | variant | token accuracy % [95 % CI] | perplexity [95 % CI] | "
             "Δ perplexity vs float | agreement % (per token) | size (bytes) | "
             "host p50 per token (µs) | × float32 | full-int8 |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows_:
        lo, hi = r["token_accuracy_ci95"]
        plo, phi = r["perplexity_ci95"]
        fi8 = "—" if r["full_int8"] is None else ("yes" if r["full_int8"] else "**no**")
        p50, ratio = r["host_p50_us_per_token"], r["host_ratio_to_float32"]
        lines.append(
            f"| {r['model']} | `{r['variant']}`{' (peer)' if r['peer'] else ''} | "
            f"{pct(r['token_accuracy'])} [{pct(lo)}, {pct(hi)}] | {r['perplexity']:.3f} "
            f"[{plo:.3f}, {phi:.3f}] | {r['perplexity_increase_vs_float_pct']:+.1f} % | "
            f"{pct(r['agreement'])} | {r['size_bytes']:,} | "
            f"{'—' if p50 is None else f'{p50:.0f}'} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} | {fi8} |")
    for s in summaries:
        for t in s.get("text_samples") or []:
            if t["variant"] == "qat_int8":
                lines += ["", f"{s['model']}, `qat_int8.tflite`, {t['decoding']}: "
                          f"`{(t['prompt'] + t['text'])[:160]!r}`"]
    return lines
