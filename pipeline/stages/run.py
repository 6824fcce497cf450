"""The main job: one function per stage, in data-path order (docs/architecture.md).

    load.load_inputs -> train_float (+ float gate) -> annotate_model -> finetune_qat
      -> convert_variants (+ float islands) -> verify_variants -> check_layer_parity
      -> save_reference -> gates.evaluate -> finish (report, manifest, commit)

Each stage takes the earlier stages' typed results (pipeline/stages/results.py) and returns
its own; ``run`` chains them, each stage times itself, and every file goes through a RunDir.
"""

from __future__ import annotations

import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

from pipeline.core.artifacts import RunDir, check_output_dir
from pipeline.core.errors import EXIT_GATE_FAILED, EXIT_OK, ConversionError
from pipeline.core.records import GateResult, Variant, VariantResult
from pipeline.keras import graph, ranges
from pipeline.stages import (annotate, convert, finetune, gates, load, modelio, parity, peers,
                             report, samples, verify)
from pipeline.stages import data as data_mod
from pipeline.stages import resume as resume_mod
from pipeline.stages.config import Config
from pipeline.stages.results import (Annotated, Conversions, FloatStage, Inputs, QatStage,
                                     Verified)
from pipeline.tflite import islands, reference
from pipeline.tflite import verdict as verdict_mod
from pipeline.tflite.runtime import ModelRunner
from pipeline.tflite.tflite_model import TFLiteModel

FLOAT_MODEL = "keras/float_model.h5"
QAT_MODEL = "keras/qat_model.h5"
FLOAT_TRAINING = "keras/float_training.json"


@dataclass
class RunResult:
    exit_code: int
    run_dir: str
    report: dict
    gates: list[GateResult] = field(default_factory=list)

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]


class _Timer:
    def __init__(self, log):
        self.times: dict[str, float] = {}
        self.log = log

    @contextmanager
    def stage(self, name: str):
        self.log(f"[{name}] ...")
        t0 = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t0, 3)
        self.log(f"[{name}] done in {self.times[name]:.1f} s")


@dataclass(frozen=True)
class _Run:
    """What every stage after load shares: the config, the run directory, the clock."""

    cfg: Config
    run_dir: RunDir
    timer: _Timer
    log: Callable[[str], None]
    resume: bool
    t_start: float
    variants: tuple[Variant, ...]  # convert.variants, with the PTQ peers convert.peers adds
    aeq_recipe: list | None = None  # aeq_mixed's per-op recipe (convert.aeq_recipe), read


def run(cfg: Config, *, resume: bool = False, log=print, model=None,
        dataset: data_mod.Dataset | None = None) -> RunResult:
    """Run the whole pipeline. ``model``/``dataset`` let Python callers pass live objects."""
    check_output_dir(cfg.output.dir, "output.dir")  # before any loading or training
    # a requested peer whose package is missing fails here, before any training
    variants = peers.resolve(cfg.convert.variants, cfg.convert.peers,
                             model is None and bool(cfg.model.name), log)
    aeq_recipe = peers.load_recipe(cfg.convert.aeq_recipe) if cfg.convert.aeq_recipe else None
    timer = _Timer(log)
    t_start = time.perf_counter()
    with timer.stage("load"):
        inputs = load.load_inputs(cfg, log, model, dataset)
    # Inputs are valid: from here on files are written (to the staging directory).
    run_dir = RunDir(cfg.run_dir, resume=resume, log=log,
                     check_resume=lambda source: resume_mod.check_same_run(cfg, source))
    ctx = _Run(cfg, run_dir, timer, log, resume, t_start, variants, aeq_recipe)
    with _kept_for_resume(run_dir, log):
        run_dir.write_text("config.toml", cfg.to_toml())
        if inputs.dataset.card:  # generated zoo data: what it is, its sizes, its assets' licences
            run_dir.write_json(report.DATA_CARD, inputs.dataset.card)
        floats = train_float(ctx, inputs)
        if gates.stops_before_qat(cfg.gates, floats.accuracy):
            return stop_at_float_gate(ctx, inputs, floats)
        qat = finetune_qat(ctx, inputs, annotate_model(ctx, floats))
        conv = convert_variants(ctx, inputs, floats, qat)
        verified = verify_variants(ctx, inputs, floats, qat, conv)
        layers = check_layer_parity(ctx, inputs, qat, conv)
        save_reference(ctx, inputs, conv, verified)
        results = gates.evaluate(cfg.gates, floats.accuracy, verified.variants,
                                 verified.agreement, conv.islands_only, task=inputs.task.kind,
                                 qat_increase_pct=qat_increase(inputs, floats, verified))
        card = report.deliverable_card(cfg.run_name, inputs, floats, conv)
        text = samples.text_samples(inputs, conv, cfg.seed, log)  # LMs with a tokenizer
        return finish(ctx, inputs, floats, results, qat=qat, conv=conv, verified=verified,
                      parity=layers, card=card, text_samples=text)


@contextmanager
def _kept_for_resume(run_dir: RunDir, log):
    """On any error keep a run that has checkpoints so --resume can continue it; drop
    anything else."""
    try:
        yield
    except BaseException:
        keep = finetune.has_checkpoint(run_dir)
        run_dir.abort(keep=keep)
        if keep:
            log(f"the unfinished run is kept in {run_dir.staging}; rerun with --resume")
        raise


def _save_h5(model, path) -> None:
    """HDF5, not .keras: tf_keras' .keras format cannot reload a QAT model ("Layer
    'quantize_layer' expected 5 variables, but received 3"), so both models use .h5."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "HDF5 file format is considered legacy"
        model.save(path, include_optimizer=False)


def _float_model(ctx: _Run, inputs: Inputs) -> tuple[object, dict | None]:
    """(float model, its training summary): trained here, or reused by a resumed run."""
    saved = ctx.run_dir.path(FLOAT_MODEL)
    if ctx.resume and saved.is_file():
        model = inputs.env.keras.models.load_model(saved, compile=False)
        ctx.run_dir.record_existing(FLOAT_MODEL)
        info = ctx.run_dir.path(FLOAT_TRAINING)
        ctx.log("train_float: reused the float model of the resumed run")
        return model, json.loads(info.read_text()) if info.is_file() else None
    cfg, s, model = ctx.cfg, inputs.splits, inputs.loaded.model
    hist = finetune.train_float(  # several outputs: the data's targets are the scored one's
        modelio.scored_view(model, cfg.data.output), s.x_train, s.y_train, s.x_val, s.y_val,
        epochs=cfg.model.float_epochs,
        learning_rate=cfg.model.float_learning_rate, batch_size=cfg.model.float_batch_size,
        from_logits=_loss_kind(inputs), verbose=cfg.qat.verbose)
    info = {"epochs": len(hist.get("loss", [])),
            "best_val_accuracy": max(hist.get("val_accuracy", [0.0]))}
    with ctx.run_dir.writing(FLOAT_MODEL) as tmp:
        _save_h5(model, tmp)
    ctx.run_dir.write_json(FLOAT_TRAINING, info)
    return model, info


def _loss_kind(inputs: Inputs) -> bool | None:
    """finetune's ``from_logits``: None for a regression head (MSE loss)."""
    return None if inputs.task.kind == "regression" else inputs.from_logits


def train_float(ctx: _Run, inputs: Inputs) -> FloatStage:
    """train_float (zoo models ship untrained), then the float baseline's test accuracy."""
    model, info = inputs.loaded.model, None
    if inputs.loaded.needs_training:
        with ctx.timer.stage("train_float"):
            model, info = _float_model(ctx, inputs)
    ds = inputs.dataset
    score = verify.score_keras("keras_float", model, ds.x_test, ds.y_test,
                               ctx.cfg.verify.batch_size, inputs.task)
    return FloatStage(model, info, score)


def stop_at_float_gate(ctx: _Run, inputs: Inputs, floats: FloatStage) -> RunResult:
    """The float model is the baseline of everything after it: a model below the bar stops
    here, before QAT and conversion, instead of producing int8 files nobody should ship."""
    bar = ctx.cfg.gates.min_float_accuracy
    ctx.log(f"stopped before QAT and conversion: the float model's test accuracy "
            f"{100 * floats.accuracy:.2f} % is below gates.min_float_accuracy "
            f"{100 * bar:.2f} % (train it further or lower the gate)")
    return finish(ctx, inputs, floats, gates.float_gate(ctx.cfg.gates, floats.accuracy))


def annotate_model(ctx: _Run, floats: FloatStage) -> Annotated:
    with ctx.timer.stage("annotate"):
        qat = Variant.qat_of(ctx.variants)  # qat_w4a8: 4-bit weights
        qat_model, coverage = annotate.apply(floats.model, ctx.cfg.annotate,
                                             weight_bits=qat.weight_bits if qat else 8)
        ctx.run_dir.write_json("coverage.json", coverage.to_dict())
    return Annotated(qat_model, coverage)


def finetune_qat(ctx: _Run, inputs: Inputs, annotated: Annotated) -> QatStage:
    """range_init (activation ranges from data), then QAT fine-tuning; saves the QAT model."""
    cfg, s, model = ctx.cfg, inputs.splits, annotated.model
    range_init = None
    if cfg.qat.range_init_samples:
        with ctx.timer.stage("range_init"):  # a resumed run's checkpoint then overrides them
            range_init = ranges.init_ranges(model, data_mod.representative_sample(
                s.x_train, cfg.qat.range_init_samples, cfg.seed))
            ctx.log(f"range init: {range_init['ranges']} quantizer range variables set from "
                    f"{range_init['samples']} training samples (tfmot starts activation "
                    "ranges at [-6, 6])")
    with ctx.timer.stage("finetune"):
        # several outputs: the data holds targets for the scored one (data.output) only
        fit = finetune.fit(modelio.scored_view(model, cfg.data.output), s.x_train,
                           s.y_train, s.x_val, s.y_val, cfg.qat,
                           ctx.run_dir, from_logits=_loss_kind(inputs), resume=ctx.resume,
                           log=ctx.log)
        q_scope = inputs.env.tfmot.quantization.keras.quantize_scope
        with q_scope(), ctx.run_dir.writing(QAT_MODEL) as tmp:
            _save_h5(model, tmp)
    return QatStage(model, annotated.coverage, fit, range_init)


def _with_islands(c: convert.Converted, layers: list[str], io: str) -> convert.Converted:
    """The converted model with ``layers`` switched to float32 (annotate.keep_float)."""
    content, rep = islands.keep_float(c.content, layers)
    view = TFLiteModel.from_bytes(content, source=c.variant.filename)
    verdict = view.verdict(allow_float_io=(io == "float"))
    return replace(c, content=content, model=view, verdict=verdict, islands=rep,
                   islands_only=islands.only_islands(verdict, rep))


def convert_variants(ctx: _Run, inputs: Inputs, floats: FloatStage,
                     qat: QatStage) -> Conversions:
    """Every configured .tflite variant, written; kept-float layers become float islands."""
    cfg = ctx.cfg
    rep = data_mod.representative_sample(inputs.dataset.x_train,
                                         cfg.convert.representative_samples, cfg.seed)
    keep_float = annotate.keep_float_layers(qat.coverage)
    done, failed = {}, {}
    float_model, float_graph = _float_graph(ctx, floats, qat)
    with ctx.timer.stage("convert"):
        for variant in ctx.variants:
            source = qat.model if variant.is_qat else float_model
            f32 = done.get(Variant.FLOAT32)
            try:
                c = convert.convert(variant, source, representative=rep, io=cfg.convert.io,
                                    float_tflite=f32.content if f32 else None,
                                    aeq_recipe=ctx.aeq_recipe)
            except ConversionError as exc:
                if variant in cfg.convert.variants:  # asked for: the run fails
                    raise
                failed[variant.value] = str(exc)  # a peer convert.peers added: noted
                ctx.log(f"convert: {variant.filename} skipped: {exc}")
                continue
            if variant.activations == "int8" and not variant.is_peer and keep_float:
                c = _with_islands(c, keep_float, cfg.convert.io)
            ctx.run_dir.write_bytes(variant.filename, c.content)
            done[variant] = c
            said = verdict_mod.line(c.verdict, variant.is_weight_only)
            extra = f", {said}" if said else ""
            ctx.log(f"convert: {variant.filename} {c.size:,} bytes in {c.seconds:.1f} s{extra}")
    return Conversions(done, calibration_samples=data_mod.count(rep), failed_peers=failed,
                       float_graph=float_graph)


def _float_graph(ctx: _Run, floats: FloatStage, qat: QatStage) -> tuple[object, str]:
    model, what = float_source(floats.model, qat.coverage)
    if model is not floats.model:
        ctx.log("convert: float32 / PTQ variants made from the attention-rewritten float graph")
    return model, what


def float_source(model, coverage) -> tuple[object, str]:
    """The float model the float32 and PTQ variants are made from (and `qat plan --ptq`
    plans on). With a MultiHeadAttention rewritten for QAT, the rewritten float graph (the
    same function in float): Keras' -1e9 mask would otherwise set the int8 range of the
    attention scores, and PTQ would be judged on that, not on quantization."""
    if not any(p.parts and p.cls == "MultiHeadAttention" for p in coverage.layers):
        return model, "the float model"
    return graph.rebuild(model).model, "the attention-rewritten float graph"


def verify_variants(ctx: _Run, inputs: Inputs, floats: FloatStage, qat: QatStage,
                    conv: Conversions) -> Verified:
    """Keras QAT and each .tflite on the test split; each .tflite against its Keras source."""
    v = ctx.cfg.verify
    x_te, y_te = inputs.dataset.x_test, inputs.dataset.y_test
    with ctx.timer.stage("verify"):
        keras_qat = verify.score_keras("keras_qat", qat.model, x_te, y_te, v.batch_size,
                                       inputs.task)
        variants, agreement, scored, tokens, others = {}, {}, {}, [], []
        for variant, c in conv.by_variant.items():
            s = verify.score_tflite(variant.value, c.content, x_te, y_te,
                                    batch_size=v.batch_size, runtime=v.runtime,
                                    num_threads=v.num_threads, workers=v.workers,
                                    task=inputs.task)
            scored[variant] = s
            ref = keras_qat if variant.is_qat else floats.score
            agreement[variant] = verify.compare(ref, s, ctx.cfg.gates.agreement_tolerance_lsb)
            others += verify.compare_others(ref, s)
            if inputs.task.kind == "sequence":
                tokens.append(verify.per_token(ref, s))
            variants[variant] = VariantResult(
                variant.value, variant.filename, c.size, s.accuracy, int(len(y_te)),
                None if c.verdict is None else c.verdict.full_int8,
                () if c.verdict is None else c.verdict.reasons, s.input_quant, s.output_quant)
            a = agreement[variant]
            ties = f" ({100 * a.top1_agreement_ties:.2f} % counting ties" + (
                f" within {a.tolerance_lsb:g} LSB)" if a.tolerance_lsb else ")") \
                if a.top1_agreement_ties not in (None, a.top1_agreement) else ""
            ctx.log(f"verify: {variant.filename} {_headline(s)}, "
                    f"agreement {100 * a.top1_agreement:.2f} %{ties}")
        # the other pairs users ask about: what QAT changed in Keras, and QAT .tflite vs float
        comparisons = [verify.compare(floats.score, keras_qat)]
        if Variant.qat_of(scored) is not None:
            comparisons.append(verify.compare(floats.score, scored[Variant.qat_of(scored)]))
    return Verified(keras_qat, scored, variants, agreement, comparisons, tokens, others)


def _headline(s: verify.Scored) -> str:
    """One model's score for the log, in its task's metric."""
    m = s.metrics
    if "perplexity" in m:
        return (f"token accuracy {100 * s.accuracy:.2f} %, perplexity {m['perplexity']:.4g} "
                f"({m['cross_entropy']:.4f} nats/token)")
    if "mse" in m:
        return f"MSE {m['mse']:.4g}, MAE {m['mae']:.4g}"
    return f"accuracy {100 * s.accuracy:.2f} %"


def qat_increase(inputs: Inputs, floats: FloatStage, verified: Verified) -> float | None:
    """The QAT .tflite's perplexity (sequence) or MSE (regression) increase vs Keras float,
    in %, or None (classification, or no QAT variant)."""
    qat = verified.scored.get(Variant.qat_of(verified.scored))
    if qat is None or inputs.task.kind == "classification":
        return None
    key = "perplexity" if inputs.task.kind == "sequence" else "mse"
    base, got = floats.score.metrics[key], qat.metrics[key]
    if base == 0:  # a perfect float model: any error is an unbounded increase
        return 0.0 if got == 0 else float("inf")
    return 100 * (got / base - 1)


def check_layer_parity(ctx: _Run, inputs: Inputs, qat: QatStage,
                       conv: Conversions) -> parity.LayerParity | None:
    """Keras QAT vs the QAT .tflite layer by layer (when qat_int8 / qat_w4a8 was converted)."""
    which = Variant.qat_of(conv.by_variant)
    if which is None:
        return None
    with ctx.timer.stage("layer_parity"):
        lp = parity.compare_layers(
            qat.model, conv.by_variant[which].content, inputs.dataset.x_test,
            batch_size=ctx.cfg.verify.batch_size, runtime=ctx.cfg.verify.runtime)
        n = data_mod.count(inputs.dataset.x_test)
        where = (f"on the first {lp.samples:,} of {n:,} test samples (memory budget), "
                 if lp.samples < n else "")
        verdict = (f"first divergent layer {lp.first_divergent}" if lp.first_divergent
                   else f"{len(lp.compared)} layers within {lp.threshold_lsb} LSB")
        ctx.log(f"layer parity: {where}{verdict}")
    return lp


def save_reference(ctx: _Run, inputs: Inputs, conv: Conversions, verified: Verified) -> None:
    """The reference bundle: test inputs and each variant's raw outputs (tflite.reference)."""
    x_te, y_te = inputs.dataset.x_test, inputs.dataset.y_test
    with ctx.timer.stage("reference"):
        bundle = {}
        for variant, c in conv.by_variant.items():
            runner = ModelRunner(c.content, batch_size=ctx.cfg.verify.batch_size)
            raw = runner.run(x_te, dequantize=False)  # a dict of inputs is fed by name
            bundle[variant.value] = (c.content, raw, verified.scored[variant].accuracy,
                                     [o.to_dict() for o in runner.outputs])
        k = runner.output_index(inputs.task.output)
        reference.save(ctx.run_dir, x_te, y_te, bundle, task=inputs.task.kind, output_index=k)


def finish(ctx: _Run, inputs: Inputs, floats: FloatStage, results: list[GateResult],
           **later) -> RunResult:
    """Write report, manifest, commit the run directory: the end of every completed run
    (one stopped at the float gate included, with the results it has; ``later``: the
    report.build keywords of the stages after the float gate)."""
    timings = dict(ctx.timer.times)
    timings["total"] = round(time.perf_counter() - ctx.t_start, 3)
    rep = report.build(ctx.cfg, inputs, floats, results, timings, **later)
    doc = report.write(ctx.run_dir, rep)
    report.write_manifest(ctx.run_dir, config_hash=ctx.cfg.hash(), timings=timings,
                          status=rep.status)
    final = ctx.run_dir.commit()
    ctx.log(f"wrote {final}/ ({rep.status})")
    for g in results:
        if not g.passed:
            ctx.log(f"gate failed: {g.name} = {g.value} (threshold {g.threshold}) {g.detail}")
    return RunResult(EXIT_OK if rep.status == "passed" else EXIT_GATE_FAILED, str(final), doc,
                     results)
