"""The main job: one function per stage, in order (docs/architecture.md).

    config -> load model -> load + validate data -> [train float baseline for zoo models]
      -> annotate -> fine-tune (QAT) -> convert -> verify -> gates -> report -> commit

Each stage is a plain function usable from Python; ``run`` strings them together, times each,
and writes every file through a RunDir.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from pipeline.stages import data as data_mod
from pipeline.core import machine
from pipeline.stages import modelio
from pipeline.keras import weights
from pipeline.core.artifacts import RunDir
from pipeline.stages.config import Config
from pipeline.core.errors import EXIT_GATE_FAILED, EXIT_OK, ModelFileError, QatError
from pipeline.core.records import SCHEMA_VERSION, GateResult, Variant, VariantResult

FLOAT_MODEL = "keras/float_model.h5"
QAT_MODEL = "keras/qat_model.h5"


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


def _save_h5(model, path) -> None:
    """HDF5, not .keras: tf_keras' .keras format cannot reload a QAT model ("Layer
    'quantize_layer' expected 5 variables, but received 3"), so both models use .h5."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "HDF5 file format is considered legacy"
        model.save(path, include_optimizer=False)


def _with_islands(c, layers, io):
    """The converted model with ``layers`` switched to float32 (annotate.keep_float)."""
    import dataclasses

    from pipeline.tflite import islands
    from pipeline.tflite.tflite_model import TFLiteModel

    content, rep = islands.keep_float(c.content, layers)
    view = TFLiteModel.from_bytes(content, source=c.variant.filename)
    verdict = view.verdict(allow_float_io=(io == "float"))
    return dataclasses.replace(c, content=content, model=view, verdict=verdict, islands=rep,
                               islands_only=islands.only_islands(verdict, rep))


def _translation(loaded) -> dict | None:
    t = getattr(loaded, "translation", None)
    if t is None:
        return None
    return {"max_abs_diff": t.max_abs_diff, "output_scale": t.output_scale,
            "max_layer_rel_diff": t.max_layer_rel_diff,
            "layers": t.layers, "notes": list(t.notes)}


def evaluate_gates(cfg: Config, float_acc: float, variants: dict, agreement: dict,
                   mixed_ok: dict | None = None) -> list:
    mixed_ok = mixed_ok or {}
    g = cfg.gates
    gates = []
    if g.min_float_accuracy > 0:
        gates.append(GateResult("min_float_accuracy", float_acc >= g.min_float_accuracy,
                                round(float_acc, 4), g.min_float_accuracy,
                                "the float model itself is below the bar"))
    qat = variants.get(Variant.QAT_INT8)
    if qat is not None:
        drop = 100 * (float_acc - qat.accuracy)
        gates.append(GateResult("max_accuracy_drop_pp", drop <= g.max_accuracy_drop_pp + 1e-9,
                                round(drop, 3), g.max_accuracy_drop_pp,
                                "qat_int8.tflite lost too much accuracy vs float"))
        agree = agreement.get(Variant.QAT_INT8)
        if agree is not None:
            gates.append(GateResult("min_agreement", agree.top1_agreement >= g.min_agreement,
                                    round(agree.top1_agreement, 5), g.min_agreement,
                                    "Keras QAT and qat_int8.tflite disagree"))
    if g.require_full_int8:
        for variant, res in variants.items():
            if not variant.is_int8:
                continue
            if variant in mixed_ok:  # float islands the policy asked for, and nothing else
                gates.append(GateResult(f"full_int8[{variant.value}]", bool(mixed_ok[variant]),
                                        "int8 + requested float islands" if mixed_ok[variant]
                                        else False, True,
                                        "; ".join(res.full_int8_reasons)))
                continue
            gates.append(GateResult(f"full_int8[{variant.value}]", bool(res.full_int8),
                                    bool(res.full_int8), True,
                                    "; ".join(res.full_int8_reasons)))
    return gates


def run(cfg: Config, *, resume: bool = False, log=print, model=None,
        dataset: data_mod.Dataset | None = None) -> RunResult:
    """Run the whole pipeline. ``model``/``dataset`` let Python callers pass live objects."""
    from pipeline.stages import annotate, finetune
    from pipeline.core import keras_env

    from pipeline.core.artifacts import check_output_dir

    check_output_dir(cfg.output.dir, "output.dir")  # before any loading or training
    timer = _Timer(log)
    t_start = time.perf_counter()
    with timer.stage("load"):
        env = keras_env.load()
        keras_env.set_seed(cfg.seed)
        if model is not None:
            from pipeline.keras import keras3

            translation = None
            if keras3.is_keras3_model(model):  # a live Keras 3 model: rebuilt as tf_keras
                translation = keras3.to_tf_keras(model, seed=cfg.seed)
                model = translation.model
            modelio.check_model_shape(model, "model argument")
            loaded = modelio.LoadedModel(model, "python:" + model.name,
                                         "keras3" if translation else "python", False,
                                         translation=translation)
        else:
            loaded = modelio.load_model(cfg.model.name, cfg.model.path,
                                        trust_model=cfg.model.trust_model, seed=cfg.seed)
        bad = weights.nonfinite(loaded.model)
        if bad:  # before any training: the fault is the file's, not the learning rate's
            raise ModelFileError("The model's weights contain NaN/inf", f"{loaded.source}: "
                                 f"{weights.describe(bad)}", "Re-export the model from a "
                                 "checkpoint whose weights are finite")
        if loaded.is_qat:
            raise QatError("The model is already quantization-aware (a quantize_apply'd model)",
                           loaded.source, "Pass the float model to `run`, or use `qat convert`")
        if dataset is None:
            data_name = cfg.data.name
            if not data_name and not cfg.data.path and loaded.kind == "zoo":
                from models import get_model

                data_name = get_model(cfg.model.name).dataset
            dataset = data_mod.load(data_name, cfg.data.path)
        in_shape = modelio.input_shape(loaded.model)
        n_out = modelio.output_size(loaded.model)
        data_mod.validate(dataset, in_shape, n_out)
        x_tr, y_tr, x_val, y_val = data_mod.train_val_split(
            dataset.x_train, dataset.y_train, cfg.data.validation_split, cfg.seed)
        from_logits = not modelio.outputs_are_probabilities(loaded.model)
        # the QAT plan before any training: a policy typo fails here, and the user sees
        # which layers need fallbacks before waiting for training
        _, planned = annotate.prepare(loaded.model, cfg.annotate)
        s = planned.share()
        log(f"coverage: {s['layers_quantized']}/{s['layers']} layers, "
            f"{100 * s['params_quantized_share']:.1f} % of parameters quantized by QAT"
            + (f"; fallbacks: {planned.fallbacks()}" if planned.fallbacks() else ""))

    # Inputs are valid: from here on files are written (to the staging directory).
    run_dir = RunDir(cfg.run_dir, resume=resume, log=log,
                     check_resume=lambda source: check_same_run(cfg, source))
    try:
        result = _stages(cfg, env, timer, run_dir, loaded, dataset,
                         (x_tr, y_tr, x_val, y_val), from_logits, resume, log, t_start)
    except BaseException:
        # Keep a run that has checkpoints so --resume can continue it; drop anything else.
        keep = finetune.has_checkpoint(run_dir)
        run_dir.abort(keep=keep)
        if keep:
            log(f"the unfinished run is kept in {run_dir.staging}; rerun with --resume")
        raise
    return result


# Keys that may differ between a run and its resumption: where it is written and how
# verbose the progress is (--quiet/--json) change nothing in the artifacts.
_RESUME_FREE = ("output.", "qat.verbose")


def check_same_run(cfg: Config, source) -> None:
    """``--resume`` continues the *same* run: the config the earlier attempt saved
    (config.toml) must equal this one (the model path, data, seed and every training key);
    otherwise its checkpoints would be restored into another model or mixed with other
    settings."""
    from pathlib import Path

    from pipeline.stages import config as config_mod
    from pipeline.core.errors import ConfigError, UsageError

    saved = Path(source) / "config.toml"
    if not saved.is_file():
        return  # killed before its first file: nothing but checkpoints-free state to reuse
    try:
        old = config_mod.load(saved)
    except ConfigError as exc:
        raise UsageError("The run to resume has an unreadable config.toml", f"{saved} ({exc})",
                         "Run without --resume to start over")

    def flat(c):
        return {f"{sec}.{k}" if isinstance(v, dict) else sec: vv
                for sec, v in c.to_dict().items()
                for k, vv in (v.items() if isinstance(v, dict) else [(None, v)])}

    a, b = flat(old), flat(cfg)
    diffs = [k for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k) and not k.startswith(_RESUME_FREE)]
    if diffs:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diffs[:3])
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise UsageError("--resume must continue the same run, but the model or config "
                         "differs from the run being resumed", f"{shown}{more} (saved in "
                         f"{saved})", "Rerun with the same model and settings, drop --resume "
                         "to start over, or pass --name for a new run directory")


def _stages(cfg, env, timer, run_dir, loaded, dataset, splits, from_logits, resume, log,
            t_start) -> RunResult:
    from pipeline.stages import annotate, convert, finetune, parity, report, verify
    from pipeline.keras import ranges
    from pipeline.tflite import reference

    x_tr, y_tr, x_val, y_val = splits
    float_model = loaded.model
    float_info = None
    run_dir.write_text("config.toml", cfg.to_toml())
    if loaded.needs_training:
        with timer.stage("train_float"):
            saved = run_dir.path(FLOAT_MODEL)
            if resume and saved.is_file():
                float_model = env.keras.models.load_model(saved, compile=False)
                run_dir.record_existing(FLOAT_MODEL)
                float_info = run_dir.path("keras/float_training.json")
                import json

                float_info = json.loads(float_info.read_text()) if float_info.is_file() else None
                log("train_float: reused the float model of the resumed run")
            else:
                hist = finetune.train_float(
                    float_model, x_tr, y_tr, x_val, y_val, epochs=cfg.model.float_epochs,
                    learning_rate=cfg.model.float_learning_rate,
                    batch_size=cfg.model.float_batch_size, from_logits=from_logits,
                    verbose=cfg.qat.verbose)
                float_info = {"epochs": len(hist.get("loss", [])),
                              "best_val_accuracy": max(hist.get("val_accuracy", [0.0]))}
                with run_dir.writing(FLOAT_MODEL) as tmp:
                    _save_h5(float_model, tmp)
                run_dir.write_json("keras/float_training.json", float_info)

    # The float model is the baseline of everything after it: a model below the bar stops
    # here, before QAT and conversion, instead of producing int8 files nobody should ship.
    vb = cfg.verify.batch_size
    keras_float = verify.score_keras("keras_float", float_model, dataset.x_test,
                                     dataset.y_test, vb)
    if keras_float.accuracy < cfg.gates.min_float_accuracy:
        gates = evaluate_gates(cfg, keras_float.accuracy, {}, {})
        log(f"stopped before QAT and conversion: the float model's test accuracy "
            f"{100 * keras_float.accuracy:.2f} % is below gates.min_float_accuracy "
            f"{100 * cfg.gates.min_float_accuracy:.2f} % (train it further or lower the gate)")
        return _finish(cfg, run_dir, timer, t_start, log, gates, {
            "model": _model_doc(loaded, float_model, from_logits, None),
            "data": dataset.summary(), "float_training": float_info,
            "keras": {"float_accuracy": keras_float.accuracy, "qat_accuracy": None},
            "variants": [], "agreement": []})

    with timer.stage("annotate"):
        qat_model, coverage = annotate.apply(float_model, cfg.annotate)
        run_dir.write_json("coverage.json", coverage.to_dict())

    range_init = None
    if cfg.qat.range_init_samples:
        with timer.stage("range_init"):  # a resumed run's checkpoint then overrides them
            range_init = ranges.init_ranges(qat_model, data_mod.representative_sample(
                x_tr, cfg.qat.range_init_samples, cfg.seed))
            log(f"range init: {range_init['ranges']} quantizer range variables set from "
                f"{range_init['samples']} training samples (tfmot starts activation ranges "
                "at [-6, 6])")

    with timer.stage("finetune"):
        fit = finetune.fit(qat_model, x_tr, y_tr, x_val, y_val, cfg.qat, run_dir,
                           from_logits=from_logits, resume=resume, log=log)
        q_scope = env.tfmot.quantization.keras.quantize_scope
        with q_scope(), run_dir.writing(QAT_MODEL) as tmp:
            _save_h5(qat_model, tmp)

    rep = data_mod.representative_sample(dataset.x_train, cfg.convert.representative_samples,
                                         cfg.seed)
    converted = {}
    keep_float = annotate.keep_float_layers(coverage)
    island_reports: dict = {}
    with timer.stage("convert"):
        for name in cfg.convert.variants:
            variant = Variant(name)
            source = qat_model if variant is Variant.QAT_INT8 else float_model
            c = convert.convert(variant, source, representative=rep, io=cfg.convert.io)
            if variant.is_int8 and keep_float:
                c = _with_islands(c, keep_float, cfg.convert.io)
                island_reports[variant.value] = c.islands.to_dict()
            run_dir.write_bytes(variant.filename, c.content)
            converted[variant] = c
            extra = "" if c.verdict is None else \
                f", full-int8: {'yes' if c.verdict.full_int8 else 'NO'}"
            log(f"convert: {variant.filename} {c.size:,} bytes in {c.seconds:.1f} s{extra}")

    with timer.stage("verify"):
        x_te, y_te = dataset.x_test, dataset.y_test
        keras_qat = verify.score_keras("keras_qat", qat_model, x_te, y_te, vb)
        variants, agreement, scored = {}, {}, {}
        for variant, c in converted.items():
            s = verify.score_tflite(variant.value, c.content, x_te, y_te, batch_size=vb,
                                    runtime=cfg.verify.runtime,
                                    num_threads=cfg.verify.num_threads,
                                    workers=cfg.verify.workers)
            scored[variant] = s
            ref = keras_qat if variant is Variant.QAT_INT8 else keras_float
            agreement[variant] = verify.compare(ref, s)
            variants[variant] = VariantResult(
                variant.value, variant.filename, c.size, s.accuracy, int(len(y_te)),
                None if c.verdict is None else c.verdict.full_int8,
                () if c.verdict is None else c.verdict.reasons, s.input_quant, s.output_quant)
            log(f"verify: {variant.filename} accuracy {100 * s.accuracy:.2f} %, agreement "
                f"{100 * agreement[variant].top1_agreement:.2f} %")
        # the other pairs users ask about: what QAT changed in Keras, and QAT .tflite vs float
        extra_pairs = [verify.compare(keras_float, keras_qat)]
        if Variant.QAT_INT8 in scored:
            extra_pairs.append(verify.compare(keras_float, scored[Variant.QAT_INT8]))

    layer_parity = None
    if Variant.QAT_INT8 in converted:
        with timer.stage("layer_parity"):
            layer_parity = parity.compare_layers(
                qat_model, converted[Variant.QAT_INT8].content, x_te, batch_size=vb,
                runtime=cfg.verify.runtime)
            log("layer parity: " + (f"first divergent layer {layer_parity.first_divergent}"
                                    if layer_parity.first_divergent else
                                    f"{len(layer_parity.compared)} layers within "
                                    f"{layer_parity.threshold_lsb} LSB"))

    with timer.stage("reference"):
        from pipeline.tflite.runtime import ModelRunner as _Runner

        bundle = {}
        for variant, c in converted.items():
            runner = _Runner(c.content, batch_size=vb)
            raw = runner.run(x_te, dequantize=False)
            bundle[variant.value] = (c.content, raw, scored[variant].accuracy,
                                     [o.to_dict() for o in runner.outputs])
        reference.save(run_dir, x_te, y_te, bundle)

    gates = evaluate_gates(cfg, keras_float.accuracy, variants, agreement,
                           {v: c.islands_only for v, c in converted.items()
                            if c.islands is not None})
    deliverable = Variant.QAT_INT8 if Variant.QAT_INT8 in converted else next(iter(converted))
    from pipeline.tflite.runtime import ModelRunner

    io = ModelRunner(converted[deliverable].content, batch_size=1).describe()
    card = report.model_card(cfg.run_name, deliverable.value, io, dataset.preprocessing,
                             modelio.output_size(float_model))
    return _finish(cfg, run_dir, timer, t_start, log, gates, {
        "model": _model_doc(loaded, float_model, from_logits, coverage.to_dict()),
        "data": dataset.summary(),
        "float_training": float_info,
        "qat": {**fit.to_dict(), "range_init": range_init},
        "keras": {"float_accuracy": keras_float.accuracy, "qat_accuracy": keras_qat.accuracy},
        "variants": [v.to_dict() for v in variants.values()],
        "agreement": [a.to_dict() for a in agreement.values()],
        "comparisons": [a.to_dict() for a in extra_pairs],
        "layer_parity": None if layer_parity is None else layer_parity.to_dict(),
        "float_islands": island_reports or None,
        "model_card": card,
    })


def _model_doc(loaded, float_model, from_logits: bool, coverage: dict | None) -> dict:
    return {"source": loaded.source, "kind": loaded.kind,
            "input_shape": list(modelio.input_shape(float_model)[1:]),
            "outputs": modelio.output_size(float_model),
            "from_logits": from_logits, "coverage": coverage,
            "keras3_translation": _translation(loaded)}


def _finish(cfg, run_dir, timer, t_start, log, gates: list, parts: dict) -> RunResult:
    """Write report, manifest, commit the run directory: the end of every completed run
    (one stopped at the float gate included, with the parts it has)."""
    from pipeline.stages import report

    status = "passed" if all(g.passed for g in gates) else "gates_failed"
    timings = dict(timer.times)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    rep_doc = {"schema_version": SCHEMA_VERSION, "name": cfg.run_name, "status": status,
               "seed": cfg.seed, "config_sha256": cfg.hash(), **parts,
               "gates": [g.to_dict() for g in gates], "timings": timings,
               "machine": machine.describe()}
    report.write(run_dir, rep_doc)
    report.write_manifest(run_dir, config_hash=cfg.hash(), timings=timings, status=status)
    final = run_dir.commit()
    log(f"wrote {final}/ ({status})")
    for g in gates:
        if not g.passed:
            log(f"gate failed: {g.name} = {g.value} (threshold {g.threshold}) {g.detail}")
    return RunResult(EXIT_OK if status == "passed" else EXIT_GATE_FAILED, str(final), rep_doc,
                     gates)
