"""`qat plan`: mixed precision under an accuracy budget (pipeline/stages/mixed.py; with
--ptq, per op by post-training quantization: stages/mixed_ptq.py), written as a recipe the
user can read, edit and rerun with `qat run`."""

from __future__ import annotations

import os
from dataclasses import replace

from pipeline.cli.commands import _log, run_config
from pipeline.core.artifacts import atomic_write_bytes, dumps_json
from pipeline.core.errors import EXIT_GATE_FAILED, EXIT_OK, UsageError
from pipeline.core.records import Variant
from pipeline.stages import data as data_mod
from pipeline.stages import (annotate, convert, finetune, load, mixed, mixed_ptq, modelio,
                             peers, run, verify)


def _float_model(cfg, inputs):
    """The trained float model: the user's, or a zoo model trained as `qat run` trains it
    (same recipe and seed, so the run that follows starts from the same model)."""
    if not inputs.loaded.needs_training:
        return inputs.loaded.model
    s, model = inputs.splits, inputs.loaded.model
    _log(f"plan: training the float {cfg.model.name} ({cfg.model.float_epochs} epochs max)")
    finetune.train_float(modelio.scored_view(model, cfg.data.output), s.x_train, s.y_train,
                         s.x_val, s.y_val, epochs=cfg.model.float_epochs,
                         learning_rate=cfg.model.float_learning_rate,
                         batch_size=cfg.model.float_batch_size,
                         from_logits=None if inputs.task.kind == "regression"
                         else inputs.from_logits, verbose=cfg.qat.verbose)
    return model


def _header(plan: mixed.Plan, ptq: bool = False) -> str:
    """The recipe's comment block: what was measured and chosen, one line per layer / op."""
    what = "op" if ptq else "layer"
    lines = [f"# qat plan{' --ptq' if ptq else ''}: mixed precision within "
             f"{plan.budget_pp:g} pp of the float model",
             f"# measured on the validation split ({plan.samples} samples, "
             f"{plan.evaluations} evaluations, {plan.seconds:.0f} s): float "
             f"{100 * plan.float_accuracy:.2f} %, all-int8 {100 * plan.int8_accuracy:.2f} %, "
             f"this plan {100 * plan.accuracy:.2f} % (judged drop {plan.judged_drop_pp:+.2f} pp, "
             f"rule {plan.rule})",
             f"# weights at 4 bits: {len(plan.int4)} {what}(s), about "
             f"{plan.bytes_saved:,} bytes saved vs all-int8; "
             + (f"16x8: {len(plan.sixteen)} op(s); float: {len(plan.float_layers)} op(s)"
                if ptq else f"float islands: {', '.join(plan.float_layers) or 'none'}"),
             "# edit " + ("the ai-edge-quantizer recipe convert.aeq_recipe names (one rule per "
                          "op) and rerun:" if ptq else "annotate.int8_weights (layers kept "
                          "8-bit) / annotate.keep_float and rerun:"),
             "#   qat run THIS_FILE", "#",
             f"# {what} | class | weights | alone at 4 bits (pp) | raised, gain (pp) | choice"]
    lines += [f"#   {l.name} | {l.cls} | {l.weights:,} | "
              f"{'—' if l.cost_pp is None else f'{0.0 - l.cost_pp:+.2f}'} | "
              f"{'—' if l.float_gain_pp is None else f'{l.float_gain_pp:+.2f}'} | {l.choice}"
              for l in plan.layers]
    return "\n".join(lines) + "\n\n"


def _ptq_plan(cfg, args, model, s, float_right, path: str):
    """(plan, the run's Config with it): the per-op PTQ plan of the float model's .tflite,
    its ai-edge-quantizer recipe written beside the TOML as <name>.aeq.json."""
    rep = data_mod.representative_sample(s.x_train, cfg.convert.representative_samples,
                                         cfg.seed)  # the run's PTQ calibration samples
    _, coverage = annotate.prepare(model, cfg.annotate)  # the run's float32 graph, its ops
    f32 = convert.to_tflite(run.float_source(model, coverage)[0], Variant.FLOAT32)
    plan = mixed_ptq.search(f32, rep, s.x_val, s.y_val, budget_pp=args.max_accuracy_drop,
                            float_right=float_right, rule=args.rule, log=_log)
    aeq = path[:-len(".toml")] + ".aeq.json"
    choices = {l.name: l.choice for l in plan.layers if l.choice != "int8"}
    atomic_write_bytes(aeq, (dumps_json(mixed_ptq.recipe(choices)) + "\n").encode())
    variants = tuple(v for v in cfg.convert.variants if v is not Variant.AEQ_MIXED)
    planned = replace(cfg, convert=replace(cfg.convert, variants=variants + (Variant.AEQ_MIXED,),
                                           aeq_recipe=aeq),
                      gates=replace(cfg.gates, max_accuracy_drop_pp=plan.budget_pp))
    return plan, planned


def cmd_plan(args, out) -> int:
    if not 0 <= args.max_accuracy_drop <= 100:
        raise UsageError("--max-accuracy-drop is in percentage points (0 to 100)",
                         args.max_accuracy_drop, "Pass e.g. --max-accuracy-drop 0.5")
    cfg = run_config(args)
    path = args.recipe_out or f"{cfg.run_name}_plan.toml"
    if not path.endswith(".toml") or os.path.isdir(path):
        raise UsageError("--recipe-out must name a .toml file", path, "Pass e.g. plan.toml")
    if args.ptq:  # before any loading or training
        peers.require("qat plan --ptq quantizes with it", Variant.AEQ_MIXED)
    inputs = load.load_inputs(cfg, _log)  # a QAT model file is refused here, named
    if inputs.task.kind == "regression":
        raise UsageError("qat plan budgets accuracy, which a regression model has none of",
                         "data.task = regression", "Choose int8_weights by hand for it")
    model = _float_model(cfg, inputs)
    s = inputs.splits
    bs = cfg.verify.batch_size
    scored = verify.score_keras("float", model, s.x_val, s.y_val, bs, inputs.task)
    float_acc = scored.accuracy
    float_right = mixed.right(scored.outputs, s.y_val)
    if args.ptq:
        plan, planned = _ptq_plan(cfg, args, model, s, float_right, path)
    else:
        rep = data_mod.representative_sample(s.x_train, cfg.qat.range_init_samples or 256,
                                             cfg.seed)
        plan = mixed.search(model, cfg.annotate, s, rep, inputs.task,
                            budget_pp=args.max_accuracy_drop, rule=args.rule,
                            float_right=float_right, batch_size=bs, log=_log)
        planned = mixed.recipe(cfg, plan)
    atomic_write_bytes(path, (_header(plan, args.ptq) + planned.to_toml()).encode())
    doc = {"recipe": path, **plan.to_dict(),
           **({"aeq_recipe": planned.convert.aeq_recipe} if args.ptq else {})}
    atomic_write_bytes(path[:-len(".toml")] + ".json", (dumps_json(doc) + "\n").encode())
    ok = doc["within_budget"]
    if args.json:
        print(dumps_json(doc), file=out)
    else:
        what = f"op(s) at 4 bits, {len(plan.sixteen)} at 16x8," if args.ptq else \
            "layer(s) at 4 bits,"
        print(f"{path}: {len(plan.int4)} {what} {len(plan.float_layers)} float, "
              f"validation accuracy {100 * plan.accuracy:.2f} % ({plan.drop_pp:+.2f} pp vs "
              f"float {100 * float_acc:.2f} %, budget {plan.budget_pp:g} pp); about "
              f"{plan.bytes_saved:,} weight bytes saved vs all-int8", file=out)
    if not ok:
        _log(f"plan: no plan fits {plan.budget_pp:g} pp (even with float everywhere it helps); "
             "the recipe holds the closest one")
    return EXIT_OK if ok else EXIT_GATE_FAILED
