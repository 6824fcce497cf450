"""Report stage: report.json (machine), report.md (human), model_card.json and manifest.json.

``build`` takes the stages' typed results (pipeline/stages/results.py) and gives a ``Report``:
``to_dict()`` is report.json, ``markdown()`` report.md, one small function per section.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from importlib import metadata as md

from pipeline.core import machine
from pipeline.core.records import SCHEMA_VERSION, Agreement, GateResult, Variant, VariantResult
from pipeline.stages import gates as gates_mod
from pipeline.stages import intervals, modelio, samples, task_report
from pipeline.stages.config import Config
from pipeline.stages.parity import LayerParity
from pipeline.stages.results import Conversions, FloatStage, Inputs, QatStage, Verified
from pipeline.tflite.runtime import ModelRunner

DATA_CARD = "data_card.json"  # written beside the report when the dataset has a card


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
            "ai_edge_quantizer": _v("ai-edge-quantizer"),
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
        what = ("token at each position is argmax(q) over the last axis" if
                len(out.get("shape") or ()) == 3 else "class is argmax(q)")
        card["read"] = (f"y = {out['scale']!r} * (q{_plus(-out['zero_point'])}); the predicted "
                        f"{what}, same as argmax(y)")
    return card


def deliverable_card(name: str, inputs: Inputs, floats: FloatStage, conv: Conversions) -> dict:
    """The model card of the variant an app ships (Conversions.deliverable)."""
    variant = conv.deliverable
    io = ModelRunner(conv.by_variant[variant].content, batch_size=1).describe()
    return model_card(name, variant.value, io, inputs.dataset.preprocessing,
                      modelio.output_size(floats.model, inputs.task.output))


@dataclass(frozen=True)
class Report:
    """Everything a run's report says, as the stages produced it. A run stopped at the float
    gate has no ``qat`` (nor conversions, verification, parity or model card)."""

    name: str
    status: str                     # passed | gates_failed
    seed: int
    config_sha256: str
    inputs: Inputs
    floats: FloatStage
    gates: tuple[GateResult, ...]
    timings: dict                   # stage -> seconds, "total" last
    machine: dict                   # machine.describe()
    qat: QatStage | None = None
    conv: Conversions | None = None
    verified: Verified | None = None
    parity: LayerParity | None = None
    card: dict | None = None        # model_card()
    text_samples: tuple = ()        # samples.text_samples: what a .tflite LM writes

    @property
    def completed(self) -> bool:
        """QAT, conversion and verification ran (not stopped at the float gate)."""
        return self.qat is not None

    def to_dict(self) -> dict:
        """report.json."""
        doc = {"schema_version": SCHEMA_VERSION, "name": self.name, "status": self.status,
               "seed": self.seed, "config_sha256": self.config_sha256,
               "model": _model_doc(self), "data": self.inputs.dataset.summary(),
               "float_training": self.floats.training,
               "data_card": DATA_CARD if self.inputs.dataset.card else None}
        if self.completed:
            doc["qat"] = self.qat.to_dict()
        doc["keras"] = {"float_accuracy": self.floats.accuracy,
                        "qat_accuracy": self.verified.keras_qat.accuracy
                        if self.verified else None}
        doc["variants"] = [v.to_dict() for v in self.variant_rows()]
        doc["agreement"] = [a.to_dict() for a in self.agreements()]
        if self.completed:
            doc["comparisons"] = [a.to_dict() for a in self.verified.comparisons
                                  + self.verified.other_outputs]  # + unscored outputs
            doc["layer_parity"] = None if self.parity is None else self.parity.to_dict()
            doc["float_islands"] = {k: r.to_dict() for k, r in self.conv.islands.items()} or None
            doc["model_card"] = self.card
            if self.text_samples:
                doc["text_samples"] = list(self.text_samples)
        if self.inputs.task.kind == "classification":
            doc.update(intervals.section(self))
        else:  # the task's metrics with bootstrap intervals, QAT vs PTQ in that metric
            doc.update(accuracy_ci95=None, task_metrics=task_report.section(self),
                       qat_vs_best_ptq=task_report.qat_vs_best_ptq(self)
                       if self.verified else None,
                       ptq_calibration=intervals.calibration(self))
        doc.update(gates=[g.to_dict() for g in self.gates], timings=self.timings,
                   machine=self.machine)
        return doc

    def markdown(self) -> str:
        """report.md."""
        sections = (_heading, _variants, _metrics, lambda r: samples.markdown(r.text_samples),
                    _differences, _layer_parity, _gates, _islands, _findings, _feeding,
                    _training, _coverage, _times)
        return "\n".join(line for section in sections for line in section(self))

    def variant_rows(self) -> list[VariantResult]:
        return list(self.verified.variants.values()) if self.verified else []

    def agreements(self) -> list[Agreement]:
        return list(self.verified.agreement.values()) if self.verified else []


def build(cfg: Config, inputs: Inputs, floats: FloatStage, gates: list[GateResult],
          timings: dict, *, qat: QatStage | None = None, conv: Conversions | None = None,
          verified: Verified | None = None, parity: LayerParity | None = None,
          card: dict | None = None, text_samples: tuple = ()) -> Report:
    """The report of a run: every stage's result (those after the float gate only when the
    run got there), its gates and stage times."""
    status = "passed" if gates_mod.passed(gates) else "gates_failed"
    return Report(cfg.run_name, status, cfg.seed, cfg.hash(), inputs, floats, tuple(gates),
                  timings, machine.describe(), qat, conv, verified, parity, card,
                  tuple(text_samples))


def _translation(loaded) -> dict | None:
    t = loaded.translation
    if t is None:
        return None
    return {"max_abs_diff": t.max_abs_diff, "output_scale": t.output_scale,
            "max_layer_rel_diff": t.max_layer_rel_diff,
            "layers": t.layers, "notes": list(t.notes)}


def _model_doc(r: Report) -> dict:
    model = r.floats.model
    return {"source": r.inputs.loaded.source, "kind": r.inputs.loaded.kind,
            "input_shape": list(modelio.input_shape(model)[1:]),
            **({"input_shapes": modelio.input_shapes(model)} if len(model.inputs) > 1 else {}),
            "outputs": modelio.output_size(model, r.inputs.task.output),
            "from_logits": r.inputs.from_logits,
            "coverage": r.qat.coverage.to_dict() if r.completed else None,
            "keras3_translation": _translation(r.inputs.loaded)}


def _pct(v):
    return "—" if v is None else f"{100 * v:.2f} %"


def _num(x, p=2):
    return "—" if x is None else f"{x:.{p}f}"


# report.md, one section per function; each returns its lines (the ones before the next
# heading included).

def _heading(r: Report) -> list[str]:
    d = r.inputs.dataset.summary()
    status = "PASSED" if r.status == "passed" else "FAILED"
    lines = [f"# QAT report: {r.name}", "",
             f"**Status: {status}** — model `{r.inputs.loaded.source}`, data "
             f"`{d['source']}` ({d['train']} train / {d['test']} test), seed {r.seed}.", ""]
    if r.machine:
        lines += [f"Measured on {machine.summary(r.machine)}.", ""]
    if r.inputs.dataset.card:
        lines += [f"Data set card: [`{DATA_CARD}`]({DATA_CARD}) (how the data was generated, "
                  "classes, sizes, splits, the assets' licences).", ""]
    return lines


def _variants(r: Report) -> list[str]:
    task = r.inputs.task.kind
    score = _score_cells(r)
    agree = {a.candidate: a for a in r.agreements()}
    head = {"classification": "accuracy | Δ vs float (pp)",
            "sequence": "token accuracy | Δ vs float (pp)",
            "regression": "MSE | Δ vs float (%)"}[task]
    lines = ["## Variants", "",
             f"| variant | size (bytes) | × float32 | {head} | "
             "agreement | full-int8 |",
             "|---|---:|---:|---:|---:|---:|---|",
             f"| Keras float | — | — | {score(r.floats.score)} | — | — |"]
    if r.verified:
        lines.append(f"| Keras QAT | — | — | {score(r.verified.keras_qat)} | — | — |")
    base = next((v.size_bytes for v in r.variant_rows() if v.variant == "float32"), None)
    for variant, v in (r.verified.variants.items() if r.verified else ()):
        a = agree.get(v.variant)
        ratio = f"{v.size_bytes / base:.3f}" if base else "—"
        fi8 = "—" if v.full_int8 is None else "yes" if v.full_int8 else \
            "no: weight-only" if variant.is_weight_only else "**no**"
        lines.append(
            f"| `{v.variant}.tflite` | {v.size_bytes:,} | {ratio} | "
            f"{score(r.verified.scored[variant])} | "
            f"{_pct(a.top1_agreement) if a and task != 'regression' else '—'} | {fi8} |")
    what = {"classification": "top-1 agreement", "sequence": "top-1 agreement per token",
            "regression": "none for regression (see the output errors in LSB below); top-1 "
                          "agreement"}[task]
    return lines + ["", f"Agreement: {what} of each `.tflite` with its Keras source on "
                    "the test split (float32 and the PTQ variants vs Keras float, the QAT one vs "
                    "Keras QAT).", ""]


def _score_cells(r: Report):
    """The variant table's "score | change vs float" cells, in the task's metric."""
    base = r.floats.score

    def cells(s) -> str:
        if r.inputs.task.kind == "regression":
            b, v = base.metrics["mse"], s.metrics["mse"]
            delta = "0.00" if s is base else (f"{100 * (v / b - 1):+.2f}" if b else "—")
            return f"{v:.4g} | {delta}"
        delta = "0.00" if s is base else f"{100 * (s.accuracy - base.accuracy):+.2f}"
        return f"{_pct(s.accuracy)} | {delta}"
    return cells


def _metrics(r: Report) -> list[str]:
    """Accuracy with Wilson intervals (classifiers), else the task's metrics."""
    if r.inputs.task.kind == "classification":
        return intervals.markdown(r)
    return task_report.markdown(r)


def _differences(r: Report) -> list[str]:
    lines = ["## Output differences", "",
             "| reference | candidate | top-1 agreement | mean |Δ| (LSB) | max |Δ| (LSB) | "
             "SQNR (dB) | cosine |", "|---|---|---:|---:|---:|---:|---:|"]
    pairs = r.agreements() + (r.verified.comparisons if r.verified else [])
    for a in pairs:
        lines.append(f"| {a.reference} | {a.candidate} | {_pct(a.top1_agreement)} | "
                     f"{_num(a.mean_error_lsb)} | {_num(a.max_error_lsb)} | "
                     f"{_num(a.sqnr_db, 1)} | {_num(a.cosine, 5)} |")
    per = {"sequence": " Top-1 agreement and errors are over every token (position).",
           "regression": " Top-1 agreement means nothing for a regression output; read the "
                         "errors."}.get(r.inputs.task.kind, "")
    pairs_other = r.verified.other_outputs if r.verified else []
    for a in pairs_other:  # a multi-output model's outputs that are not scored
        lines.append(f"| {a.reference} | {a.candidate} | {_pct(a.top1_agreement)} | "
                     f"{_num(a.mean_error_lsb)} | {_num(a.max_error_lsb)} | "
                     f"{_num(a.sqnr_db, 1)} | {_num(a.cosine, 5)} |")
    return lines + ["", "LSB = one step of the candidate's int8 output scale." + per, ""]


def _layer_parity(r: Report) -> list[str]:
    lp, qat = r.parity, Variant.qat_of(r.conv.by_variant if r.conv else {}) or Variant.QAT_INT8
    if lp is None:
        return []
    return [f"## Layer parity: Keras QAT vs {qat}.tflite", "",
            f"Each quantized layer's output in Keras vs the matching tensor of the .tflite on "
            f"the {lp.samples} test images, in LSB of that tensor's scale.", "",
            lp.markdown(), ""]


def _gates(r: Report) -> list[str]:
    lines = ["## Quality gates", "", "| gate | value | threshold | result |",
             "|---|---:|---:|---|"]
    for g in r.gates:
        lines.append(f"| {g.name} | {g.value} | {g.threshold} | "
                     f"{'pass' if g.passed else '**FAIL** ' + g.detail} |")
    return lines


def _islands(r: Report) -> list[str]:
    islands = r.conv.islands if r.conv else {}
    if not islands:
        return []
    lines = ["", "## Float islands (annotate.keep_float)", ""]
    for variant, rep in islands.items():
        lines.append(f"- `{variant}`: layers {', '.join(rep.layers)} run in float32 "
                     f"({', '.join(rep.ops)}; {rep.added_ops} QUANTIZE/DEQUANTIZE "
                     "ops added at the island's edges)")
    return lines


def _findings(r: Report) -> list[str]:
    not_int8 = [v for v in r.variant_rows() if v.full_int8 is False]
    return ["", "## Full-int8 findings", ""] + [
        f"- `{v.variant}`: " + "; ".join(v.full_int8_reasons) for v in not_int8] if not_int8 else []


def _feeding(r: Report) -> list[str]:
    card = r.card
    if not card:
        return []
    inp, out = card["input"], card["output"]
    lines = ["", "## Feeding the model on the phone", "",
             f"File `{card['file']}`; preprocessing: "
             f"{card['preprocessing'].get('transform', '')}", "",
             f"- input `{inp['name']}` {inp['dtype']} {inp['shape']}, scale {inp['scale']}, "
             f"zero point {inp['zero_point']}",
             f"- output `{out['name']}` {out['dtype']} {out['shape']}, scale {out['scale']}, "
             f"zero point {out['zero_point']}"]
    if card.get("feed"):
        lines.append(f"- feed: `{card['feed']}`")
    if card.get("read"):
        lines.append(f"- read: `{card['read']}`")
    return lines


def _training(r: Report) -> list[str]:
    lines = ["", "## Training", ""]
    ft = r.floats.training
    if ft:
        lines.append(f"- float baseline trained {ft['epochs']} epochs "
                     f"(best val accuracy {_pct(ft['best_val_accuracy'])})")
    if r.completed:
        fit, ri = r.qat.fit, r.qat.range_init
        lines.append(f"- QAT: {fit.epochs_run} epoch(s) this run, resumed from epoch "
                     f"{fit.resumed_from}, best epoch {fit.best_epoch}, stopped early: "
                     f"{fit.stopped_early}")
        if ri:
            lines.append(f"- activation ranges initialised from {ri['samples']} training "
                         f"samples ({ri['ranges']} range variables; tfmot starts activation "
                         "ranges at [-6, 6])")
        s = r.qat.coverage.share()
        lines.append(f"- QAT covers {s['layers_quantized']}/{s['layers']} layers "
                     f"({s['params_quantized']:,}/{s['params']:,} parameters); see QAT "
                     "coverage below")
    k3 = r.inputs.loaded.translation
    if k3 is not None:
        lines.append(f"- rebuilt from Keras 3 as tf_keras: {k3.layers} layers, outputs equal "
                     f"within {k3.max_abs_diff:.1e} on random inputs"
                     + (f" ({'; '.join(k3.notes)})" if k3.notes else ""))
    return lines


def _coverage(r: Report) -> list[str]:
    if not r.completed:
        return []
    return ["", "## QAT coverage", "", r.qat.coverage.markdown()]


def _times(r: Report) -> list[str]:
    lines = ["", "## Stage times", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {sec:.1f} |" for stage, sec in r.timings.items()]
    return lines + [""]


def write(run_dir, report: Report) -> dict:
    """report.json + report.md (+ model_card.json when there is one); returns report.json's
    content."""
    doc = report.to_dict()
    if report.card:
        run_dir.write_json("model_card.json", report.card)
    run_dir.write_json("report.json", doc)
    run_dir.write_text("report.md", report.markdown())
    return doc


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
