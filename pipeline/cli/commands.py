"""The CLI's command bodies: ``cmd_<name>(args, out) -> exit code`` for run, convert, verify
and inspect. Argument parsing, error handling and exit codes stay in pipeline/cli/app.py.
None of the modules imported here imports TensorFlow at module level (only
core.keras_env.load() does), so ``--help``, ``inspect`` and ``verify --reference`` never load it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from models import DATASETS, zoo_names
from pipeline.core import keras_env
from pipeline.core.artifacts import atomic_write_bytes, check_output_dir, dumps_json
from pipeline.core.errors import EXIT_GATE_FAILED, EXIT_OK, UsageError
from pipeline.core.records import SCHEMA_VERSION, Variant
from pipeline.stages import annotate, config, convert, modelio, parity, peers, verify
from pipeline.stages import data as data_mod
from pipeline.stages import load as load_stage
from pipeline.stages.run import run
from pipeline.tflite import feeding, inspect_report, reference
from pipeline.tflite import verdict as verdict_mod
from pipeline.tflite.isolated import run_isolated
from pipeline.tflite.runtime import ModelRunner
from pipeline.tflite.tflite_model import TFLiteModel, read_file


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _split_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError("--set expects KEY=VALUE", item, "Write e.g. --set qat.epochs=3")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _source(value: str, what: str, zoo: list[str]) -> tuple[str, str]:
    """('name', value) for a zoo entry, ('path', abs path) for a file; else a usage error."""
    if value in zoo:
        return "name", value
    if os.path.exists(value) or os.sep in value or "." in os.path.basename(value):
        return "path", os.path.abspath(value)
    raise UsageError(f"Unknown {what}", value,
                     f"Pass a file path or one of the bundled names: {', '.join(zoo)}")


def run_config(args):
    """The Config of `qat run` / `qat plan`: the recipe with the flags over it."""
    overrides: dict = _split_set(args.set)
    if args.model:
        kind, val = _source(args.model, "model", zoo_names())
        overrides[f"model.{kind}"] = val
    if args.data:
        kind, val = _source(args.data, "dataset", sorted(DATASETS))
        overrides[f"data.{kind}"] = val
    if args.output is not None:
        if not args.output.strip():
            raise UsageError("--output is empty", repr(args.output),
                             "Pass a directory, e.g. --output artifacts")
        overrides["output.dir"] = args.output
    if args.name is not None:
        config.check_run_name(args.name, "--name")
        overrides["output.name"] = args.name
    if args.epochs is not None:
        overrides["qat.epochs"] = str(args.epochs)
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    if args.trust_model:
        overrides["model.trust_model"] = "true"
    if args.quiet or args.json:
        overrides["qat.verbose"] = "0"
    if not args.recipe and not args.model:
        raise UsageError("Nothing to run", "no RECIPE and no --model",
                         "Pass a recipe (qat run digits_cnn) or --model FILE --data FILE.npz")
    return config.load(args.recipe, overrides)


def cmd_run(args, out) -> int:
    cfg = run_config(args)
    result = run(cfg, resume=args.resume, log=_log)
    if args.json:
        print(dumps_json({"exit_code": result.exit_code, "run_dir": result.run_dir,
                          "report": result.report}), file=out)
    else:
        print(f"{result.run_dir}/report.md", file=out)
    return result.exit_code


def cmd_convert(args, out) -> int:
    check_output_dir(args.output)  # before loading or converting anything
    keras_env.load()
    keras_env.set_seed(args.seed)
    loaded = modelio.load_model(path=args.model, trust_model=args.trust_model)
    qat = None if not loaded.is_qat else \
        Variant.QAT_W4A8 if annotate.weight_bits_of(loaded.model) == 4 else Variant.QAT_INT8
    variants = _variants(args, qat)
    if args.representative_samples < 1:
        raise UsageError("--representative-samples must be at least 1",
                         args.representative_samples, "Use e.g. 200")
    kind, val = _source(args.data, "dataset", _datasets())
    ds = data_mod.load(**{kind: val}, task="auto")
    model_inputs, out_shape = load_stage.model_io(loaded.model)
    ds = data_mod.prepare(ds, model_inputs, out_shape, "auto")  # any task, inputs by name
    rep = data_mod.representative_sample(ds.x_train, args.representative_samples, args.seed)
    aeq = peers.load_recipe(args.aeq_recipe) if args.aeq_recipe else None
    results, bad, f32 = [], False, None
    for variant in variants:
        c = convert.convert(variant, loaded.model, representative=rep, io=args.io,
                            float_tflite=f32, aeq_recipe=aeq)
        f32 = c.content if variant is Variant.FLOAT32 else f32
        path = os.path.join(args.output, variant.filename)
        atomic_write_bytes(path, c.content)
        row = {"variant": variant.value, "path": path, "bytes": c.size,
               "seconds": round(c.seconds, 2),
               "verdict": None if c.verdict is None else c.verdict.to_dict()}
        results.append(row)
        if c.verdict is not None and not c.verdict.full_int8 and not variant.is_weight_only:
            bad = True
            _log(f"{variant.filename}: NOT full-integer: {'; '.join(c.verdict.reasons)}")
        if not args.json:
            said = verdict_mod.line(c.verdict, variant.is_weight_only)
            flag = f"  {said}" if said else ""
            print(f"{path}  {c.size:,} bytes{flag}", file=out)
    if args.json:
        print(dumps_json({"schema_version": SCHEMA_VERSION, "outputs": results}), file=out)
    return EXIT_GATE_FAILED if bad and not args.allow_float else EXIT_OK


def _variants(args, qat: Variant | None) -> list[Variant]:
    """--variants, checked against the kind of model (default: what the model converts to).
    ``qat``: the variant a QAT model converts to (qat_int8, or qat_w4a8 for 4-bit weights),
    None for a float model."""
    if not args.variants:
        return [qat] if qat else [Variant.FLOAT32, Variant.PTQ_INT8]
    try:
        variants = [Variant(s.strip()) for s in args.variants.split(",") if s.strip()]
    except ValueError:
        raise UsageError("Unknown variant", args.variants, f"Use {', '.join(Variant.names())}")
    if qat and any(v is not qat for v in variants):
        raise UsageError(f"This QAT model converts only to {qat}", args.variants,
                         f"Pass --variants {qat}, or the float model for "
                         f"{Variant.FLOAT32}/{Variant.PTQ_INT8}/{Variant.AEQ_INT8}")
    wrong = Variant.qat_of(variants)
    if not qat and wrong:
        raise UsageError(f"{wrong} needs a QAT model (saved after quantize_apply)",
                         args.model, "Run `qat run` first, or convert its keras/qat_model.h5")
    return variants


def _datasets() -> list[str]:
    return sorted(DATASETS)


@dataclass
class _Verification:
    """What ``qat verify`` found: the JSON result, the text lines, the failed checks."""

    result: dict
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def cmd_verify(args, out) -> int:
    _check_verify_args(args)
    content = read_file(args.model)  # a regular file, size and header checked first
    # structural pre-check, bounded by the file size and by --timeout
    view = TFLiteModel.from_bytes(content, source=args.model,
                                  deadline=time.monotonic() + args.timeout)
    verdict = view.verdict()
    isolate = not args.no_isolate
    found = _Verification({"schema_version": SCHEMA_VERSION, "model": args.model,
                           "size_bytes": view.file_size, "full_int8": verdict.full_int8,
                           "full_int8_reasons": list(verdict.reasons), "isolated": isolate,
                           "input": view.inputs()[0].to_dict(),
                           "output": view.outputs()[0].to_dict()})
    if args.reference:
        _verify_reference(args, content, isolate, found)
    if args.data:
        x = _verify_accuracy(args, content, view, isolate, found)
        found.lines += [f"  - {r}" for r in verdict.reasons]
        if args.layers:
            _verify_layers(args, content, x, found)
    if args.require_full_int8 and not verdict.full_int8:
        found.failures.append("not full-int8: " + "; ".join(verdict.reasons))
    if found.failures:
        found.result["gate_failed"] = "; ".join(found.failures)
        found.lines.append(f"gate failed: {found.result['gate_failed']}")
    if args.json:
        print(dumps_json(found.result), file=out)
    else:
        print("\n".join(found.lines), file=out)
    return EXIT_GATE_FAILED if found.failures else EXIT_OK


def _check_verify_args(args) -> None:
    if args.batch_size < 0:
        raise UsageError("--batch-size must be 0 (auto) or more", args.batch_size,
                         "Use 0 for a cache-sized batch, or e.g. 64")
    if not (args.data or args.reference):
        raise UsageError("verify needs --data or --reference", "neither",
                         "Pass --data digits (or an .npz), or --reference artifacts/NAME")
    if not (args.timeout > 0 and args.timeout != float("inf")):  # also refuses NaN
        raise UsageError("--timeout must be a positive number of seconds", args.timeout,
                         "Use e.g. --timeout 60")
    if args.layers and not args.data:
        raise UsageError("--layers needs --data", "no --data", "Pass --data digits")


def _verify_reference(args, content: bytes, isolate: bool, found: _Verification) -> None:
    """--reference: the outputs against the expected outputs the run saved."""
    ref, doc, x, y = reference.load(args.reference)
    name, how = reference.pick_variant(doc, content, args.model, args.variant)
    raw = _run_raw(content, x, args, isolate)
    chk = reference.check(raw, ref, doc, name, y, how, tolerance_lsb=args.tolerance_lsb)
    found.result["reference"] = chk.to_dict()
    diff = f"{chk.max_error_lsb:g} LSB" if chk.max_error_lsb is not None else \
        f"{chk.max_abs_error:.3g}"
    found.lines.append(
        f"{args.model}: reference check {'PASSED' if chk.passed else 'FAILED'} as {name} "
        f"(matched by {how}): {100 * chk.exact_fraction:.2f} % of outputs identical, max "
        f"difference {diff}, top-1 agreement {100 * chk.top1_agreement:.2f} %, accuracy "
        f"{100 * chk.accuracy:.2f} % (expected {100 * chk.expected_accuracy:.2f} %)")
    found.failures += list(chk.reasons)


def _verify_accuracy(args, content: bytes, view: TFLiteModel, isolate: bool,
                     found: _Verification):
    """--data: accuracy over a split; returns the inputs used (for --layers)."""
    kind, val = _source(args.data, "dataset", _datasets())
    ds = data_mod.load(**{kind: val}, task="auto")
    # the task (classification, sequence, regression) from the .tflite's output and the
    # targets; several inputs are matched by name (tflite/feeding.py)
    slots = feeding.slots_of_model(view)
    out = view.outputs()[0]
    ids = ("int32", "int64")  # token / position ids (int8 inputs are quantized floats)
    ds = data_mod.prepare(ds, [(s.name, tuple(None if d < 0 else d for d in s.shape),
                                s.dtype if s.dtype in ids else None) for s in slots],
                          tuple(None if d < 0 else d for d in (out.shape_signature or
                                                                out.shape)), "auto")
    x, y = (ds.x_test, ds.y_test) if args.split == "test" else (ds.x_train, ds.y_train)
    task = verify.Task(ds.task, True)  # a .tflite's outputs are read as logits
    scored = verify.score_tflite(os.path.basename(args.model), content, x, y,
                                 batch_size=args.batch_size, runtime=args.runtime,
                                 num_threads=args.num_threads, workers=args.workers,
                                 isolate=isolate, timeout=args.timeout, source=args.model,
                                 task=task)
    found.result.update(runtime=scored.runtime, split=args.split, samples=int(len(y)),
                        accuracy=scored.accuracy)
    if ds.task != "classification":
        found.result.update(task=ds.task, metrics=scored.metrics)
    full = found.result["full_int8"]
    found.lines.append(f"{args.model}: {_score_text(ds.task, scored)} on {len(y)} "
                       f"{args.split} samples ({scored.runtime}); full-int8: "
                       f"{'yes' if full else 'no'}")
    if args.min_accuracy is not None and scored.accuracy < args.min_accuracy:
        found.failures.append(f"accuracy {scored.accuracy:.4f} < {args.min_accuracy}")
    return x


def _score_text(task: str, scored) -> str:
    m = scored.metrics
    if task == "sequence":
        return (f"token accuracy {100 * scored.accuracy:.2f} %, perplexity "
                f"{m['perplexity']:.4g} (95 % CI {m['perplexity_ci95'][0]:.4g} - "
                f"{m['perplexity_ci95'][1]:.4g})")
    if task == "regression":
        return f"MSE {m['mse']:.4g}, MAE {m['mae']:.4g}"
    return f"accuracy {100 * scored.accuracy:.2f} %"


def _verify_layers(args, content: bytes, x, found: _Verification) -> None:
    """--layers: layer-by-layer parity with the Keras QAT model."""
    keras_path = args.keras or os.path.join(os.path.dirname(os.path.abspath(
        args.model)), "keras", "qat_model.h5")
    if not os.path.exists(keras_path):
        raise UsageError("--layers needs the Keras QAT model", keras_path,
                         "Pass --keras path/to/qat_model.h5")
    # the isolated run before this proved the file loads without crashing this process
    loaded = modelio.load_model(path=keras_path)
    if not loaded.is_qat:
        raise UsageError("--keras must be a QAT model (saved after quantize_apply)",
                         keras_path, "Use keras/qat_model.h5 of the run")
    par = parity.compare_layers(loaded.model, content, x, batch_size=args.batch_size,
                                threshold_lsb=args.threshold_lsb, runtime=args.runtime)
    found.result["layers"] = par.to_dict()
    found.lines += ["", par.markdown()]
    if par.first_divergent:
        found.failures.append(f"layer {par.first_divergent} diverges")


def _run_raw(content: bytes, x, args, isolate: bool) -> list:
    """Raw (not dequantized) outputs of the model on x."""
    if isolate:
        return run_isolated(content, x, batch_size=args.batch_size, dequantize=False,
                            runtime=args.runtime, num_threads=args.num_threads or None,
                            timeout=args.timeout, precheck=False, source=args.model)[0]
    return ModelRunner(content, batch_size=args.batch_size, runtime=args.runtime,
                       num_threads=args.num_threads or None,
                       source=args.model).run(x, dequantize=False)


def cmd_inspect(args, out) -> int:
    if args.coverage:
        return _coverage(args, out)

    view = TFLiteModel.from_file(args.model)
    doc = inspect_report.build(view, allow_float_io=args.allow_float_io, tensors=args.tensors)
    if args.json:
        print(dumps_json(doc), file=out)
    else:
        print(inspect_report.text(doc), file=out)
    v = doc["verdict"]  # a full-integer 16x8 model is not full-int8
    if args.require_full_int8 and not (v["full_int8"] and v["activations"] == "int8"):
        return EXIT_GATE_FAILED
    return EXIT_OK


def _coverage(args, out) -> int:
    kind, val = _source(args.model, "model", zoo_names())
    loaded = modelio.load_model(**{kind: val}, trust_model=args.trust_model)
    _, cov = annotate.prepare(loaded.model)
    if args.json:
        print(dumps_json(cov.to_dict()), file=out)
    else:
        print(f"{args.model}: QAT coverage ({loaded.kind})\n", file=out)
        print(cov.markdown(), file=out)
    return EXIT_OK


COMMANDS = {"run": cmd_run, "convert": cmd_convert, "verify": cmd_verify,
            "inspect": cmd_inspect}
