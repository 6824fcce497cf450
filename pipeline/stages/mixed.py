"""Mixed precision under an accuracy budget (`qat plan`): which layers take 4-bit weights,
which keep 8, which stay float, measured on held-out data.

The measure is the model QAT would start from (annotate, activation ranges from range_init,
no fine-tuning): round-to-nearest 4-bit / 8-bit weights and int8 activations simulated by
tfmot's fake-quant, scored on the validation split (never the test split, which the run
then judges). No Hessian or gradient proxy: each number is an accuracy.

1. Candidates: every annotated layer with weights that qat_w4a8 would make 4-bit
   (annotate.W4_INT8_LAYERS, depthwise, stay 8-bit).
2. Sensitivity: each candidate alone at 4 bits, every other layer 8-bit; its cost is the
   all-8-bit accuracy minus that, in pp.
3. Search (greedy, each step measured): candidates in order of cost per byte saved; one joins
   the 4-bit set when the whole set stays within the budget of the float model (a candidate
   whose cost alone exceeds the budget left is skipped unmeasured, and the trail says so).
   "Within" is judged by the rule (RULES): by default the upper end of the paired 95 %
   interval of the drop, so that a validation split too small to tell 0.5 pp from noise
   does not let the plan overspend on the test split (measured on digits: a point-estimate
   plan at 0 pp on 136 validation images lost 0.89 pp on test).
4. Float islands: when even all-8-bit misses the budget, the layer whose float island
   (annotate.keep_float) gains most is kept float, one at a time, measured, until it fits.

16x8 (int16 activations) is not chosen per layer here: the TFLite converter cannot export a
QAT model whose layers mix int8 and int16 activations (measured; stages/mixed_ptq.py), so
per-op 16x8 is planned by post-training quantization (`qat plan --ptq`).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.records import Variant
from pipeline.keras import ranges
from pipeline.keras.plan import LayerStatus
from pipeline.stages import annotate, metrics, stats, verify

# how a plan's drop is judged against the budget: the paired 95 % interval's upper end, or the
# measured drop (faster to fill, and on a small validation split often over budget on test)
RULES = ("ci95", "point")


@dataclass(frozen=True)
class LayerChoice:
    name: str
    cls: str
    weights: int            # kernel values (4 bits each instead of 8 when chosen)
    cost_pp: float | None   # accuracy lost with this layer alone at 4 bits (validation)
    # accuracy won by raising it (a float island; 16x8 or float per op with --ptq), searched
    # only when all-int8 misses the budget
    float_gain_pp: float | None = None
    choice: str = "int8"    # int4 | int8 | float (and 16x8 per op, mixed_ptq)


@dataclass
class Plan:
    budget_pp: float
    float_accuracy: float
    int8_accuracy: float    # every layer 8-bit (the all-int8 plan)
    accuracy: float         # the chosen plan
    layers: list[LayerChoice]
    samples: int
    evaluations: int = 0
    seconds: float = 0.0
    trail: list[dict] = field(default_factory=list)  # each search step and its accuracy
    rule: str = "ci95"      # how a drop is judged against the budget (_Rule)
    judged_drop_pp: float | None = None  # the chosen plan's drop as the rule judges it
    fits: bool = True       # the chosen plan is within the budget under the rule
    note: str = ""          # why the search did not run (the rule cannot be met here)

    @property
    def int4(self) -> list[str]:
        return [l.name for l in self.layers if l.choice == "int4"]

    @property
    def sixteen(self) -> list[str]:
        return [l.name for l in self.layers if l.choice == "16x8"]

    @property
    def float_layers(self) -> list[str]:
        return [l.name for l in self.layers if l.choice == "float"]

    @property
    def bytes_saved(self) -> int:
        """Weight bytes saved vs all-int8: half a byte per 4-bit weight (packed)."""
        return sum(l.weights // 2 for l in self.layers if l.choice == "int4")

    @property
    def drop_pp(self) -> float:
        return 100 * (self.float_accuracy - self.accuracy)

    def to_dict(self) -> dict:
        return {"budget_pp": self.budget_pp, "float_accuracy": self.float_accuracy,
                "int8_accuracy": self.int8_accuracy, "accuracy": self.accuracy,
                "drop_pp": round(self.drop_pp, 3), "rule": self.rule,
                "judged_drop_pp": self.judged_drop_pp, "within_budget": self.fits,
                "note": self.note,
                "int4": self.int4, "16x8": self.sixteen, "float": self.float_layers,
                "weight_bytes_saved_vs_int8": self.bytes_saved,
                "measured_on": f"validation split, {self.samples} samples",
                "evaluations": self.evaluations, "seconds": round(self.seconds, 1),
                "layers": [asdict(l) for l in self.layers], "trail": self.trail}


class _Scorer:
    """Accuracy on the validation split of the QAT start model under one precision plan.

    One model is annotated at 4 bits; a plan sets each candidate's weight quantizers to 4 or
    8 bits (their ``num_bits``, read when the model is traced), re-runs range_init (the
    activation ranges depend on the weights' rounding) and predicts. That is the model
    annotate.apply(int8_weights=...) builds for the plan (test_mixed checks they score the
    same). A plan with float islands changes the graph: it is annotated afresh."""

    def __init__(self, model, policy, names, x_val, y_val, x_rep, task, batch_size: int):
        self.model, self.names, self.task = model, names, task
        self.policy = replace(policy, int8_weights=())
        self.x_val, self.y_val, self.x_rep, self.batch_size = x_val, y_val, x_rep, batch_size
        self.qat, _ = annotate.apply(model, self.policy, weight_bits=4)
        self.quantizers = {n: qs for n, qs in annotate.weight_quantizers(self.qat).items()
                           if n in names}
        self.count = 0

    def __call__(self, int4: set[str], keep_float: set[str] = frozenset()) -> np.ndarray:
        self.count += 1
        if keep_float:
            return self._fresh(int4, keep_float)
        for name, quantizers in self.quantizers.items():
            for q in quantizers:
                q.num_bits = 4 if name in int4 else 8
        self.qat.predict_function = None  # retrace with the new bits
        return self._score(self.qat)

    def _fresh(self, int4: set[str], keep_float: set[str]) -> np.ndarray:
        eight = [re.escape(n) for n in self.names if n not in int4 and n not in keep_float]
        policy = replace(self.policy, int8_weights=tuple(eight),
                         keep_float=tuple(self.policy.keep_float) +
                         tuple(re.escape(n) for n in sorted(keep_float)))
        return self._score(annotate.apply(self.model, policy, weight_bits=4)[0])

    def _score(self, qat) -> np.ndarray:
        ranges.init_ranges(qat, self.x_rep)
        s = verify.score_keras("plan", qat, self.x_val, self.y_val, self.batch_size, self.task)
        return right(s.outputs, self.y_val)


def right(outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample (per real token, flattened, for a sequence model): is the top-1 right?"""
    y = np.asarray(y)
    return (np.argmax(outputs, axis=-1) == y)[y != metrics.PAD]


class _Rule:
    """Does a plan's per-sample correctness fit the budget vs float? ``ci95``: the upper end
    of the paired 95 % interval of the drop (Newcombe, stats.paired) is within it;
    ``point``: the measured drop is."""

    def __init__(self, rule: str, float_right: np.ndarray, budget_pp: float):
        if rule not in RULES:
            raise ConfigError("Unknown plan rule", repr(rule), f"Use one of {', '.join(RULES)}")
        self.rule, self.f, self.budget = rule, float_right, budget_pp

    def drop_pp(self, r: np.ndarray) -> float:
        """The drop this rule judges: the interval's upper end (ci95) or the measured one."""
        if self.rule == "point":
            return float(100 * (self.f.mean() - r.mean()))
        return float(-100 * stats.paired("plan", r, "float", self.f).ci95[0])

    def __call__(self, r: np.ndarray) -> bool:
        return bool(self.drop_pp(r) <= self.budget + 1e-9)


def candidates(model, policy) -> list[LayerChoice]:
    """The layers a 4-bit plan may choose: annotated, with a kernel, not kept 8-bit by class."""
    _, coverage = annotate.prepare(model, policy)
    layers = {l.name: l for l in model.layers}
    out = []
    for p in coverage.layers:
        if p.parts or p.status not in (LayerStatus.QUANTIZED, LayerStatus.FALLBACK) or \
                p.cls in annotate.W4_INT8_LAYERS or p.name not in layers:
            continue
        kernel = getattr(layers[p.name], "kernel", None)
        if kernel is not None:
            out.append(LayerChoice(p.name, p.cls, int(kernel.shape.num_elements()), None))
    return out


# long: the method's four steps, each logged
def search(model, policy, splits, x_rep, task, *, budget_pp: float, float_right: np.ndarray,
           rule: str = "ci95", batch_size: int = 256, log=print) -> Plan:
    """The plan for ``model`` (trained float) under ``budget_pp`` (accuracy drop vs float on
    the validation split, in pp, judged by ``rule``: _Rule); ``float_right``: the float
    model's per-sample correctness there (right()); ``policy``: the recipe's AnnotateConfig."""
    t0 = time.perf_counter()
    fits = _Rule(rule, float_right, budget_pp)
    layers = candidates(model, policy)
    names = [l.name for l in layers]
    score = _Scorer(model, policy, names, splits.x_val, splits.y_val, x_rep, task, batch_size)
    base = score(set())
    log(f"plan: float {100 * float_right.mean():.2f} %, all-int8 {100 * base.mean():.2f} % on "
        f"{len(base)} validation samples; {len(layers)} candidate layers; rule {rule}")
    floor = fits.drop_pp(float_right)  # the float model judged against itself
    if floor > budget_pp + 1e-9:
        note = (f"{len(base)} validation samples cannot show a drop below {floor:.2f} pp at "
                f"95 % (budget {budget_pp:g} pp): every layer stays 8-bit; more validation "
                "data (data.validation_split), a larger budget or --rule point allow 4-bit")
        log(f"plan: {note}")
        point = float(100 * (float_right.mean() - base.mean()))
        return Plan(budget_pp, float(float_right.mean()), float(base.mean()),
                    float(base.mean()), layers, len(base), score.count,
                    time.perf_counter() - t0, [], rule, round(floor, 3),
                    point <= budget_pp + 1e-9, note)
    costs = {}
    for l in layers:
        costs[l.name] = round(100 * (base.mean() - score({l.name}).mean()), 6) + 0.0
        log(f"plan: {l.name} ({l.cls}, {l.weights:,} weights) alone at 4 bits: "
            f"{0.0 - costs[l.name]:+.2f} pp")
    keep_float, trail, now = _islands(score, model, policy, base, fits, log)
    chosen: set[str] = set()
    for l in sorted(layers, key=lambda l: (costs[l.name] / max(l.weights, 1), l.name)):
        if costs[l.name] > budget_pp - fits.drop_pp(now) + 1e-9:
            trail.append({"step": f"+{l.name} at 4 bits", "accuracy": None, "kept": False,
                          "why": "its cost alone exceeds the budget left"})
            continue
        trial = score(chosen | {l.name}, keep_float)
        ok = fits(trial)
        trail.append({"step": f"+{l.name} at 4 bits", "accuracy": float(trial.mean()),
                      "judged_drop_pp": round(fits.drop_pp(trial), 3), "kept": ok})
        if ok:
            chosen.add(l.name)
            now = trial
    out = [replace(l, cost_pp=round(costs[l.name], 3),
                   choice="int4" if l.name in chosen else "int8") for l in layers]
    out += [LayerChoice(n, "", 0, None, choice="float") for n in sorted(keep_float)]
    return Plan(budget_pp, float(float_right.mean()), float(base.mean()), float(now.mean()),
                out, len(base), score.count, time.perf_counter() - t0, trail, rule,
                round(fits.drop_pp(now), 3), fits(now))


def _islands(score, model, policy, base: np.ndarray, fits, log):
    """(keep_float set, trail, correctness): float islands until all-8-bit fits the budget."""
    keep, trail, now = set(), [], base
    if fits(base):
        return keep, trail, now
    _, coverage = annotate.prepare(model, policy)
    pool = [p.name for p in coverage.layers if not p.parts and p.status.trains_quantized]
    while not fits(now) and len(keep) < len(pool) - 1:  # one layer at least stays quantized
        gains = {n: score(set(), keep | {n}) for n in pool if n not in keep}
        best = max(gains, key=lambda n: (gains[n].mean(), n))
        keep.add(best)
        now = gains[best]
        trail.append({"step": f"float island {best}", "accuracy": float(now.mean()),
                      "judged_drop_pp": round(fits.drop_pp(now), 3), "kept": True})
        log(f"plan: all-int8 misses the budget; {best} kept float: {100 * now.mean():.2f} %")
    return keep, trail, now


def recipe(cfg, plan: Plan):
    """The run's Config with the plan written into it: qat_w4a8 with annotate.int8_weights
    (the layers that stay 8-bit) when some layer takes 4 bits, else qat_int8; keep_float for
    the islands; gates.max_accuracy_drop_pp = the budget."""
    qat = Variant.QAT_W4A8 if plan.int4 else Variant.QAT_INT8
    variants = tuple(v for v in cfg.convert.variants if not v.is_qat) + (qat,)
    eight = tuple(re.escape(l.name) for l in plan.layers if l.choice == "int8") \
        if plan.int4 else ()
    annotate_cfg = replace(cfg.annotate, int8_weights=eight, keep_float=tuple(
        cfg.annotate.keep_float) + tuple(re.escape(n) for n in plan.float_layers))
    return replace(cfg, annotate=annotate_cfg, convert=replace(cfg.convert, variants=variants),
                   gates=replace(cfg.gates, max_accuracy_drop_pp=plan.budget_pp))
