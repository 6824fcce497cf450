"""Report stage: report.json (machine), report.md (human), model_card.json and manifest.json."""

from __future__ import annotations

import platform
import sys
from importlib import metadata as md

from pipeline.core import machine
from pipeline.core.records import SCHEMA_VERSION


def _v(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def versions() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "tensorflow": _v("tensorflow"), "tf_keras": _v("tf-keras"),
            "tensorflow_model_optimization": _v("tensorflow-model-optimization"),
            "ai_edge_litert": _v("ai-edge-litert"), "tflite_runtime": _v("tflite-runtime"),
            "numpy": _v("numpy"), "qat_deploy": _v("qat-deploy")}


def _plus(v: int) -> str:
    return "" if v == 0 else (f" + {v}" if v > 0 else f" - {-v}")


def model_card(name: str, variant: str, io: dict, preprocessing: dict, num_classes: int) -> dict:
    """What an app needs to feed the model and read its output."""
    inp, out = io["inputs"][0], io["outputs"][0]
    card = {
        "schema_version": SCHEMA_VERSION,
        "model": name,
        "file": f"{variant}.tflite",
        "input": inp,
        "output": out,
        "classes": num_classes,
        "preprocessing": preprocessing,
    }
    if inp.get("scale"):
        card["feed"] = (f"q = clip(round(x / {inp['scale']!r}){_plus(inp['zero_point'])}, "
                        f"-128, 127) as int8, x preprocessed as above")
    if out.get("scale"):
        card["read"] = (f"y = {out['scale']!r} * (q{_plus(-out['zero_point'])}); the predicted "
                        "class is argmax(q), same as argmax(y)")
    return card


def _pct(v):
    return "—" if v is None else f"{100 * v:.2f} %"


def markdown(report: dict) -> str:
    r = report
    lines = [f"# QAT report: {r['name']}", ""]
    status = "PASSED" if r["status"] == "passed" else "FAILED"
    lines += [f"**Status: {status}** — model `{r['model']['source']}`, data "
              f"`{r['data']['source']}` ({r['data']['train']} train / {r['data']['test']} test), "
              f"seed {r['seed']}.", ""]
    if r.get("machine"):
        lines += [f"Measured on {machine.summary(r['machine'])}.", ""]
    lines += ["## Variants", "",
              "| variant | size (bytes) | × float32 | accuracy | Δ vs float (pp) | "
              "agreement | full-int8 |",
              "|---|---:|---:|---:|---:|---:|---|"]
    float_acc = r["keras"]["float_accuracy"]
    agree = {a["candidate"]: a for a in r["agreement"]}
    lines.append(f"| Keras float | — | — | {_pct(float_acc)} | 0.00 | — | — |")
    if r["keras"].get("qat_accuracy") is not None:
        qa = r["keras"]["qat_accuracy"]
        lines.append(f"| Keras QAT | — | — | {_pct(qa)} | {100 * (qa - float_acc):+.2f} | — | — |")
    base = next((v["size_bytes"] for v in r["variants"] if v["variant"] == "float32"), None)
    for v in r["variants"]:
        a = agree.get(v["variant"])
        ratio = f"{v['size_bytes'] / base:.3f}" if base else "—"
        fi8 = "—" if v["full_int8"] is None else ("yes" if v["full_int8"] else "**no**")
        lines.append(
            f"| `{v['variant']}.tflite` | {v['size_bytes']:,} | {ratio} | {_pct(v['accuracy'])} "
            f"| {100 * (v['accuracy'] - float_acc):+.2f} | "
            f"{_pct(a['top1_agreement']) if a else '—'} | {fi8} |")
    lines += ["", "Agreement: top-1 agreement of each `.tflite` with its Keras source on the "
              "test split (float32 and ptq_int8 vs Keras float, qat_int8 vs Keras QAT).", ""]
    lines += ["## Output differences", "",
              "| reference | candidate | top-1 agreement | mean |Δ| (LSB) | max |Δ| (LSB) | "
              "SQNR (dB) | cosine |", "|---|---|---:|---:|---:|---:|---:|"]
    for a in r["agreement"] + r.get("comparisons", []):
        f = lambda x, p=2: "—" if x is None else f"{x:.{p}f}"
        lines.append(f"| {a['reference']} | {a['candidate']} | {_pct(a['top1_agreement'])} | "
                     f"{f(a['mean_error_lsb'])} | {f(a['max_error_lsb'])} | {f(a['sqnr_db'], 1)} "
                     f"| {f(a['cosine'], 5)} |")
    lines += ["", "LSB = one step of the candidate's int8 output scale.", ""]
    lp = r.get("layer_parity")
    if lp:
        from pipeline.stages.parity import LayerParity, LayerRow

        rows = [LayerRow(**{**row, "shape": tuple(row["shape"])}) for row in lp["layers"]]
        view = LayerParity(rows, lp["threshold_lsb"], lp["samples"], lp["first_divergent"])
        lines += ["## Layer parity: Keras QAT vs qat_int8.tflite", "",
                  f"Each quantized layer's output in Keras vs the matching tensor of the "
                  f".tflite on the {lp['samples']} test images, in LSB of that tensor's scale.",
                  "", view.markdown(), ""]
    lines += ["## Quality gates", "", "| gate | value | threshold | result |", "|---|---:|---:|---|"]
    for g in r["gates"]:
        lines.append(f"| {g['name']} | {g['value']} | {g['threshold']} | "
                     f"{'pass' if g['passed'] else '**FAIL** ' + g['detail']} |")
    isl = r.get("float_islands")
    if isl:
        lines += ["", "## Float islands (annotate.keep_float)", ""]
        for variant, rep in isl.items():
            lines.append(f"- `{variant}`: layers {', '.join(rep['layers'])} run in float32 "
                         f"({', '.join(rep['ops'])}; {rep['added_ops']} QUANTIZE/DEQUANTIZE "
                         "ops added at the island's edges)")
    not_int8 = [v for v in r["variants"] if v["full_int8"] is False]
    if not_int8:
        lines += ["", "## Full-int8 findings", ""]
        for v in not_int8:
            lines += [f"- `{v['variant']}`: " + "; ".join(v["full_int8_reasons"])]
    card = r.get("model_card")
    if card:
        lines += ["", "## Feeding the model on the phone", "",
                  f"File `{card['file']}`; preprocessing: {card['preprocessing'].get('transform', '')}",
                  "", f"- input `{card['input']['name']}` {card['input']['dtype']} "
                  f"{card['input']['shape']}, scale {card['input']['scale']}, zero point "
                  f"{card['input']['zero_point']}",
                  f"- output `{card['output']['name']}` {card['output']['dtype']} "
                  f"{card['output']['shape']}, scale {card['output']['scale']}, zero point "
                  f"{card['output']['zero_point']}"]
        if card.get("feed"):
            lines.append(f"- feed: `{card['feed']}`")
        if card.get("read"):
            lines.append(f"- read: `{card['read']}`")
    q = r.get("qat") or {}
    lines += ["", "## Training", ""]
    if r.get("float_training"):
        ft = r["float_training"]
        lines.append(f"- float baseline trained {ft['epochs']} epochs "
                     f"(best val accuracy {_pct(ft['best_val_accuracy'])})")
    if q:
        lines.append(f"- QAT: {q['epochs_run']} epoch(s) this run, resumed from epoch "
                     f"{q['resumed_from_epoch']}, best epoch {q['best_epoch']}, stopped early: "
                     f"{q['stopped_early']}")
        if q.get("range_init"):
            ri = q["range_init"]
            lines.append(f"- activation ranges initialised from {ri['samples']} training "
                         f"samples ({ri['ranges']} range variables; tfmot starts activation "
                         "ranges at [-6, 6])")
    cov = r["model"].get("coverage")
    if cov:
        lines.append(f"- QAT covers {cov['layers_quantized']}/{cov['layers']} layers "
                     f"({cov['params_quantized']:,}/{cov['params']:,} parameters); see QAT "
                     "coverage below")
    k3 = r["model"].get("keras3_translation")
    if k3:
        lines.append(f"- rebuilt from Keras 3 as tf_keras: {k3['layers']} layers, outputs equal "
                     f"within {k3['max_abs_diff']:.1e} on random inputs"
                     + (f" ({'; '.join(k3['notes'])})" if k3["notes"] else ""))
    if cov:
        from pipeline.keras.coverage import Coverage
        from pipeline.keras.fallbacks import LayerPlan

        plans = [LayerPlan(**{**l, "weight_attrs": tuple(l["weight_attrs"]),
                              "inbound": tuple(l["inbound"])}) for l in cov["per_layer"]]
        lines += ["", "## QAT coverage", "",
                  Coverage(cov["model"], plans, cov["notes"]).markdown()]
    lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---:|"]
    for stage, sec in r["timings"].items():
        lines.append(f"| {stage} | {sec:.1f} |")
    lines.append("")
    return "\n".join(lines)


def write(run_dir, report: dict) -> None:
    """report.json + report.md (+ model_card.json when there is one)."""
    if report.get("model_card"):
        run_dir.write_json("model_card.json", report["model_card"])
    run_dir.write_json("report.json", report)
    run_dir.write_text("report.md", markdown(report))


def write_manifest(run_dir, *, config_hash: str, timings: dict, status: str) -> None:
    """Last file of a run: sha256 of every file in the run directory (those an earlier,
    resumed attempt wrote included), except the manifest itself."""
    run_dir.inventory()
    run_dir.write_json("manifest.json", {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "files": {k: v for k, v in sorted(run_dir.files.items()) if k != "manifest.json"},
        "versions": versions(),
        "machine": machine.describe(),
        "config_sha256": config_hash,
        "timings_s": timings,
        "python_executable": sys.executable,
    })
