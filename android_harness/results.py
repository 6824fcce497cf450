"""Results: one JSON document per run (``schema_version``), a Markdown and a CSV table.

Per (target, model, config): the repeats as measured, then a summary - p50/p90/p99, mean, std,
a bootstrap 95 % CI of the median, init and first-inference times, memory, the stability
verdict (CV of the per-repeat medians) and the ratio of the median to the float32 baseline
measured in the same run on the same target and config.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from pathlib import Path
from typing import Sequence

import numpy as np

from android_harness import stats
from android_harness.protocol import Protocol, TargetRun
from android_harness.records import BenchConfig, ModelInfo
from pipeline.core.records import SCHEMA_VERSION

# Per-invoke latencies kept in results.json per repeat; the statistics use all of them, the
# file keeps an evenly strided subsample beyond this (a 5 us model makes 200k invokes/s).
MAX_STORED_INVOKES = 20000


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def summarize(ms: Sequence, *, seed: int = 0, stability_cv: float = 0.05) -> dict:
    """Summary of the repeats of one (target, model, config)."""
    ok = [m for m in ms if m.status == "ok"]
    failed = [m for m in ms if m.status != "ok"]
    out: dict = {"repeats": len(ms), "repeats_ok": len(ok),
                 "errors": [m.error for m in failed]}
    if not ok:
        out["status"] = "failed"
        return out
    out["status"] = "ok" if not failed else "partial"
    if all(m.latencies_us for m in ok):
        groups = [np.asarray(m.latencies_us) for m in ok]
        dist = stats.Distribution.of(np.concatenate(groups))
        centers = [float(np.median(g)) for g in groups]
        ci = stats.bootstrap_median_ci(groups, seed=seed)
        out.update(median_source="per-invoke latencies", invokes=dist.count, p50_us=dist.p50,
                   p90_us=dist.p90, p99_us=dist.p99, mean_us=dist.mean, std_us=dist.std,
                   min_us=dist.min, max_us=dist.max)
    else:
        with_median = all(m.median_us is not None for m in ok)
        centers = [m.median_us if with_median else m.mean_us for m in ok]
        counts = [m.count for m in ok]
        mean = std = None
        if all(m.std_us is not None and m.mean_us is not None for m in ok) and sum(counts):
            mean, std = stats.pooled_moments(counts, [m.mean_us for m in ok],
                                             [m.std_us for m in ok])
        ci = stats.bootstrap_center_ci(centers, seed=seed)
        out.update(median_source="benchmark_model median of each repeat" if with_median else
                   "benchmark_model mean of each repeat (this build prints no percentiles)",
                   invokes=sum(counts), p50_us=float(np.median(centers)), p90_us=None,
                   p99_us=None, mean_us=mean, std_us=std,
                   min_us=min((m.min_us for m in ok if m.min_us is not None), default=None),
                   max_us=max((m.max_us for m in ok if m.max_us is not None), default=None))
    stab = stats.stability(centers, stability_cv)
    out.update(repeat_medians_us=centers, ci95_median_us=ci.to_dict() if ci else None,
               cv_of_repeat_medians=stab.cv, stability=stab.to_dict(),
               init_us=_median([m.init_us for m in ok]),
               first_inference_us=_median([m.first_us for m in ok]),
               warmup_avg_us=_median([m.warmup_avg_us for m in ok]),
               memory_overall_mb=_median([m.memory.get("overall_mb") for m in ok]),
               memory_peak_mb=max((m.memory["peak_mb"] for m in ok if "peak_mb" in m.memory),
                                  default=None),
               delegation=next((m.delegation for m in ok if m.delegation), None),
               background_cpu_max=max((m.background_cpu for m in ok
                                       if m.background_cpu is not None), default=None))
    return out


def _stored(m) -> dict:
    d = m.to_dict()
    lat = d.get("latencies_us")
    if lat and len(lat) > MAX_STORED_INVOKES:
        step = -(-len(lat) // MAX_STORED_INVOKES)
        d["latencies_us"] = lat[::step]
        d["latencies_stored"] = f"every {step}th of {len(lat)} (statistics use all)"
    return d


def build(*, run_id: str, command: str, started_at: str, finished_at: str, protocol: Protocol,
          models: Sequence[ModelInfo], configs: Sequence[BenchConfig], runs: Sequence[TargetRun],
          baseline: str, harness_version: str) -> dict:
    results = []
    for run in runs:
        for model in models:
            for cfg in configs:
                ms = sorted((m for m in run.measurements
                             if m.model == model.label and m.config == cfg.key),
                            key=lambda m: m.repeat)
                if not ms and run.status != "ok":
                    continue
                results.append({
                    "target": run.target, "kind": run.kind, "model": model.label,
                    "model_sha256": model.sha256, "config": cfg.to_dict(), "config_key": cfg.key,
                    **summarize(ms, seed=protocol.seed, stability_cv=protocol.stability_cv),
                    "ratio_to_baseline": None,
                    "repeat_measurements": [_stored(m) for m in ms]})
    base = {(r["target"], r["config_key"]): r for r in results
            if r["model"] == baseline or r["model"].split("/")[-1] == baseline}
    for r in results:
        b = base.get((r["target"], r["config_key"]))
        if b and r.get("p50_us") and b.get("p50_us"):
            r["ratio_to_baseline"] = r["p50_us"] / b["p50_us"]
    return {
        "schema_version": SCHEMA_VERSION, "kind": "android-harness.results", "run_id": run_id,
        "command": command, "started_at": started_at, "finished_at": finished_at,
        "harness_version": harness_version, "baseline": baseline,
        "protocol": protocol.to_dict(), "configs": [c.to_dict() for c in configs],
        "models": [m.to_dict() for m in models],
        "targets": [{"target": r.target, "kind": r.kind, "status": r.status, "error": r.error,
                     "tool": r.tool, "started_at": r.started_at, "finished_at": r.finished_at,
                     "conditions_start": r.conditions_start, "conditions_end": r.conditions_end}
                    for r in runs],
        "results": results}


# -- tables -------------------------------------------------------------------------------------
COLUMNS = ["target", "model", "config", "status", "repeats", "p50_us", "p90_us", "p99_us",
           "ci95_low_us", "ci95_high_us", "cv_pct", "stability", "init_us", "ratio"]


def table_rows(doc: dict) -> list[dict]:
    rows = []
    for r in doc["results"]:
        ci = r.get("ci95_median_us") or {}
        cv = r.get("cv_of_repeat_medians")
        rows.append({"target": r["target"], "model": r["model"], "config": r["config_key"],
                     "status": r["status"], "repeats": f"{r['repeats_ok']}/{r['repeats']}",
                     "p50_us": r.get("p50_us"), "p90_us": r.get("p90_us"),
                     "p99_us": r.get("p99_us"), "ci95_low_us": ci.get("low"),
                     "ci95_high_us": ci.get("high"),
                     "cv_pct": None if cv is None else 100 * cv,
                     "stability": _stability_label(r),
                     "init_us": r.get("init_us"), "ratio": r.get("ratio_to_baseline")})
    return rows


BUSY_HOST_CPU = 0.25  # other processes used a quarter of a CPU or more during a repeat


def _stability_label(r: dict) -> str:
    label = (r.get("stability") or {}).get("label", r["status"])
    busy = r.get("background_cpu_max")
    if label.startswith("unstable") and busy is not None and busy >= BUSY_HOST_CPU:
        label = label[:-1] + f"; other processes used up to {busy:.1f} CPU)"
    return label


def _us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def _target_line(t: dict) -> str:
    c = t.get("conditions_start") or {}
    if t["kind"] == "host":
        desc = f"{c.get('cpu_model') or c.get('machine')}, {c.get('cores')} cores"
    else:
        desc = (f"{c.get('manufacturer')} {c.get('model')} ({c.get('soc')}), Android "
                f"{c.get('android_release')} (SDK {c.get('sdk')}), {c.get('abi')}, "
                f"{c.get('cores')} cores")
        bat = c.get("battery") or {}
        if bat:
            desc += f", battery {bat.get('level')} % {bat.get('temperature_c')} degC"
        ts = c.get("thermal_service") or {}
        if ts:
            desc += f", thermal status {ts.get('status_name')}"
    tool = t.get("tool") or {}
    desc += f"; {tool.get('name')} {tool.get('version') or ''}".rstrip()
    status = "" if t["status"] == "ok" else f" - {t['status'].upper()}: {t.get('error')}"
    return f"- `{t['target']}`: {desc}{status}"


def markdown(doc: dict) -> str:
    head = ["target", "model", "config", "repeats", "p50 us", "p90 us", "p99 us",
            "95% CI of p50 (us)", "CV of repeat medians", "stability", "init us",
            f"x {doc['baseline']}"]
    order = "interleaved" if doc["protocol"].get("interleave") else "shuffled"
    lines = [f"Run `{doc['run_id']}` ({doc['command']}), median over "
             f"{doc['protocol']['repeats']} {order} repeats; ratio = p50 / p50 of "
             f"`{doc['baseline']}` on the same target and config.", ""]
    lines += [_target_line(t) for t in doc["targets"]] + [""]
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join(["---"] * 3 + ["--:"] * 4 + ["---", "--:", "---", "--:", "--:"]) + "|"]
    for row in table_rows(doc):
        ci = ("-" if row["ci95_low_us"] is None else
              f"{_us(row['ci95_low_us'])} - {_us(row['ci95_high_us'])}")
        stab = row["stability"] if row["status"] in ("ok", "partial") else row["status"].upper()
        lines.append("| " + " | ".join([
            row["target"], row["model"], row["config"], row["repeats"], _us(row["p50_us"]),
            _us(row["p90_us"]), _us(row["p99_us"]), ci,
            "-" if row["cv_pct"] is None else f"{row['cv_pct']:.1f} %", stab,
            _us(row["init_us"]), "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"]) + " |")
    failed = [r for r in doc["results"] if r.get("errors")]
    if failed:
        lines += ["", "Failures:"]
        for r in failed:
            lines += [f"- {r['target']} {r['model']} {r['config_key']}: {e}" for e in r["errors"]]
    return "\n".join(lines) + "\n"


def csv_text(doc: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in table_rows(doc):
        w.writerow({k: ("" if v is None else round(v, 4) if isinstance(v, float) else v)
                    for k, v in row.items()})
    return buf.getvalue()


def write(doc: dict, out_dir: str | os.PathLike) -> dict[str, str]:
    """results.json, table.md and table.csv in out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "table.md", "csv": out / "table.csv"}
    for key, text in (("json", json.dumps(doc, indent=1, allow_nan=False) + "\n"),
                      ("markdown", markdown(doc)), ("csv", csv_text(doc))):
        tmp = paths[key].with_suffix(paths[key].suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    return {k: os.fspath(v) for k, v in paths.items()}
