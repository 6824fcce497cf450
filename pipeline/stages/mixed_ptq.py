"""Mixed precision by post-training quantization, per op (`qat plan --ptq`): int4 / int8 /
16x8 / float for each op of the float model's .tflite, under an accuracy budget, made by
ai-edge-quantizer (the ``zoo`` extra) and measured with LiteRT on the validation split.

Why a second planner. QAT's plan (stages/mixed.py) chooses 4-bit / 8-bit weights and float
islands, but not 16x8 per layer: measured with TF 2.21, a tfmot activation quantizer set to
16 bits does reach the converter as an INT16 tensor, but the converter inserts no requantize
between it and its int8 neighbours, and LiteRT refuses the file ("conv.cc: output->type !=
input_type (INT16 != INT8)"). ai-edge-quantizer quantizes per op and inserts a QUANTIZE op
wherever int8 and int16 tensors meet (measured on kws_dscnn), so per-op 16x8 is a PTQ
capability; this planner uses it, and its result is the PTQ peer a QAT run is compared with.

Each op's precision (its ``choice``), cheapest first: ``int4`` (INT4 weights, int8
activations; CONV_2D and FULLY_CONNECTED only, as the aeq_w4a8 peer), ``int8`` (every op's
start), ``16x8`` (int16 activations, int8 weights), ``float`` (not quantized; QUANTIZE /
DEQUANTIZE at its edges). Ops are named by ai-edge-quantizer's scope: their output tensor
names joined by ";" with a trailing ";"; the recipe selects each with an anchored regex.

1. All-int8 (ai-edge-quantizer's static recipe, min/max, calibrated on the same samples
   as the run's PTQ) is measured.
2. Rescue, only when all-int8 misses the budget: each op is tried alone one rung up (16x8;
   then float if 16x8 was not enough), and those that gain are raised in order of their
   gain, each step measured and kept only when it lowers the judged drop, until it fits.
3. 4-bit: each CONV_2D / FULLY_CONNECTED op still at int8 alone at int4 (its cost), then the
   greedy measured search of stages/mixed.py (cost per weight byte saved, the same rule).

The plan is ai-edge-quantizer's own JSON recipe (``Quantizer(model, recipe)`` rereads it),
which a run applies as the variant ``aeq_mixed`` (``convert.aeq_recipe``).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace

import numpy as np

from pipeline.core.errors import ConversionError
from pipeline.core.records import Variant
from pipeline.stages import peers, verify
from pipeline.stages.mixed import LayerChoice, Plan, _Rule, right
from pipeline.tflite.tflite_model import TFLiteModel

WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED")  # may take INT4 weights (depthwise: peers)
RUNGS = ("16x8", "float")  # the rescue, in order
SKIP_OPS = ("QUANTIZE", "DEQUANTIZE")


def ops_of(float_tflite: bytes) -> list[LayerChoice]:
    """The main subgraph's ops, each named by its ai-edge-quantizer scope, with its weight
    count (the constant second input of a CONV_2D / FULLY_CONNECTED; 0 for the others)."""
    sg = TFLiteModel.from_bytes(float_tflite, source="float32.tflite").main
    out = []
    for scope, op in peers.op_scopes(sg):
        if op.opcode in SKIP_OPS:
            continue
        w = sg.tensors[op.inputs[1]] if op.opcode in WEIGHT_OPS and len(op.inputs) > 1 else None
        n = int(np.prod(w.shape)) if w is not None and w.is_constant else 0
        out.append(LayerChoice(scope, op.opcode, n, None))
    return out


def recipe(choices: dict[str, str]) -> list[dict]:
    """ai-edge-quantizer's recipe for {scope: choice}: static int8 (min/max) for every op,
    then one anchored rule per op whose choice is not int8 (the last matching rule wins)."""
    # lazy: the zoo extra, not in core/qat
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    rp = recipe_manager.RecipeManager()
    minmax = algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT
    every = qtyping.TFLOperationName.ALL_SUPPORTED
    rp.add_static_config(regex=".*", operation_name=every, activation_num_bits=8,
                         weight_num_bits=8, algorithm_key=minmax)
    for scope, choice in sorted(choices.items()):
        regex = f"^{re.escape(scope)}$"
        if choice == "float":
            rp.add_quantization_config(regex, every,
                                       algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
        elif choice in ("int4", "16x8"):
            rp.add_static_config(regex=regex, operation_name=every,
                                 activation_num_bits=16 if choice == "16x8" else 8,
                                 weight_num_bits=4 if choice == "int4" else 8,
                                 algorithm_key=minmax)
    return rp.get_quantization_recipe()


def unrealized(content: bytes, choices: dict[str, str]) -> list[str]:
    """The planned ops whose precision the file does not have: ai-edge-quantizer 0.10 keeps
    an op int8 where it has no 16-bit kernel for it (measured: HARD_SWISH), without a word;
    such a plan is not scored as if it held."""
    want = {"16x8": "INT16", "float": "FLOAT32"}
    sg = TFLiteModel.from_bytes(content, source="plan").main
    ops = dict(peers.op_scopes(sg))
    bad = []
    for scope, choice in choices.items():
        op = ops.get(scope)
        if op is None:
            bad.append(scope)
        elif choice == "int4":
            if sg.tensors[op.inputs[1]].dtype != "INT4":
                bad.append(scope)
        elif sg.tensors[op.outputs[0]].dtype != want[choice]:
            bad.append(scope)
    return bad


class _Scorer:
    """Per-sample correctness on the validation split of the file a plan makes. The float
    model is calibrated once (peers.calibrate): every plan is quantized from the same
    activation ranges, as its own calibration on the same samples would give them."""

    def __init__(self, float_tflite: bytes, x_rep, x_val, y_val):
        self.f32, self.x_val, self.y_val = float_tflite, x_val, y_val
        self.ranges = peers.calibrate(float_tflite, x_rep)
        self.count = 0

    def __call__(self, choices: dict[str, str]) -> np.ndarray | None:
        """None when ai-edge-quantizer cannot make this plan (an op without that kernel)."""
        self.count += 1
        try:
            content = peers.quantize(self.f32, None, Variant.AEQ_MIXED,
                                     recipe=recipe(choices), ranges=self.ranges)
        except ConversionError:  # ai-edge-quantizer refused this plan (peers wraps its errors)
            return None
        if unrealized(content, choices):
            return None
        s = verify.score_tflite("plan", content, self.x_val, self.y_val)
        return right(s.outputs, self.y_val)


# long: the three steps, each logged
def search(float_tflite: bytes, x_rep, x_val, y_val, *, budget_pp: float,
           float_right: np.ndarray, rule: str = "ci95", log=print) -> Plan:
    """The per-op plan for the float model's .tflite under ``budget_pp`` (accuracy drop vs
    float on (x_val, y_val), in pp, judged by ``rule`` as in stages/mixed.py)."""
    t0 = time.perf_counter()
    fits = _Rule(rule, float_right, budget_pp)
    ops = ops_of(float_tflite)
    score = _Scorer(float_tflite, x_rep, x_val, y_val)
    base = score({})
    if base is None:
        raise ConversionError(f"{peers.PACKAGE} cannot quantize this model to int8",
                              "the all-int8 plan failed", "Plan with QAT (no --ptq)")
    log(f"plan --ptq: float {100 * float_right.mean():.2f} %, all-int8 "
        f"{100 * base.mean():.2f} % on {len(base)} validation samples; {len(ops)} ops; "
        f"rule {rule}")
    floor = fits.drop_pp(float_right)
    if floor > budget_pp + 1e-9:
        note = (f"{len(base)} validation samples cannot show a drop below {floor:.2f} pp at "
                f"95 % (budget {budget_pp:g} pp): every op stays int8")
        log(f"plan --ptq: {note}")
        return _plan(ops, {}, {}, {}, base, base, fits, score, t0, [], note)
    choices, gains, trail, now = _rescue(ops, score, base, fits, log)
    costs = {}
    for o in ops:
        if o.cls in WEIGHT_OPS and o.weights and o.name not in choices:
            r = score({**choices, o.name: "int4"})
            costs[o.name] = None if r is None else round(100 * (now.mean() - r.mean()), 6) + 0.0
    for o in sorted((o for o in ops if costs.get(o.name) is not None),
                    key=lambda o: (costs[o.name] / o.weights, o.name)):
        if costs[o.name] > budget_pp - fits.drop_pp(now) + 1e-9:
            trail.append({"step": f"{o.name} at int4", "accuracy": None, "kept": False,
                          "why": "its cost alone exceeds the budget left"})
            continue
        trial = score({**choices, o.name: "int4"})
        ok = trial is not None and fits(trial)
        trail.append({"step": f"{o.name} at int4", "kept": ok,
                      "accuracy": None if trial is None else float(trial.mean())})
        if ok:
            choices[o.name], now = "int4", trial
    log(f"plan --ptq: {sum(c == 'int4' for c in choices.values())} op(s) at int4, "
        f"{100 * now.mean():.2f} %")
    return _plan(ops, choices, costs, gains, base, now, fits, score, t0, trail, "")


def _rescue(ops, score, base, fits, log):
    """(choices, gains, trail, correctness): when the plan misses the budget, each op not yet
    raised is tried alone one rung up (16x8, then float); those that gain are raised in order
    of their gain, each step measured and kept only when it lowers the judged drop, until the
    plan fits."""
    choices, gains, trail, now = {}, {}, [], base
    for rung in RUNGS:
        if fits(now):
            break
        alone = {o.name: score({**choices, o.name: rung}) for o in ops
                 if _below(choices.get(o.name, "int8"), rung)}
        up = {n: r for n, r in alone.items() if r is not None and r.mean() > now.mean()}
        changed = False  # since the ops were tried alone
        for name in sorted(up, key=lambda n: (-up[n].mean(), n)):
            if fits(now):
                break
            trial = score({**choices, name: rung}) if changed else up[name]
            ok = trial is not None and fits.drop_pp(trial) < fits.drop_pp(now)
            trail.append({"step": f"{name} at {rung}", "kept": ok,
                          "accuracy": None if trial is None else float(trial.mean()),
                          "judged_drop_pp": None if trial is None else
                          round(fits.drop_pp(trial), 3)})
            if ok:
                gains[name] = round(100 * (trial.mean() - now.mean()), 6)
                choices[name], now, changed = rung, trial, True
                log(f"plan --ptq: all-int8 misses the budget; {name} at {rung}: "
                    f"{100 * now.mean():.2f} %")
    return choices, gains, trail, now


def _below(choice: str, rung: str) -> bool:
    order = ("int4", "int8", *RUNGS)
    return order.index(choice) < order.index(rung)


def _plan(ops, choices, costs, gains, base, now, fits, score, t0, trail, note) -> Plan:
    layers = [replace(o, choice=choices.get(o.name, "int8"), cost_pp=costs.get(o.name),
                      float_gain_pp=gains.get(o.name)) for o in ops]
    return Plan(fits.budget, float(fits.f.mean()), float(base.mean()), float(now.mean()),
                layers, len(base), score.count, time.perf_counter() - t0, trail, fits.rule,
                round(fits.drop_pp(now), 3), fits(now), note)
