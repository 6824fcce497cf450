"""Mixed precision under a budget (stages/mixed.py) on real tiny models: every accuracy the
plan reports is re-measured here, independently, and must match exactly (the same model, the
same data, the same deterministic fake-quant: no tolerance)."""

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.records import Variant
from pipeline.keras import ranges
from pipeline.stages import annotate, config, mixed, verify
from pipeline.stages.results import Splits


@pytest.fixture(scope="module")
def splits(digits):
    x, y = digits["x_train"], digits["y_train"]
    return Splits(x[:1200], y[:1200], x[1200:], y[1200:])


def _right(model, policy, splits, rep) -> np.ndarray:
    qat, _ = annotate.apply(model, policy, weight_bits=4)
    ranges.init_ranges(qat, rep)
    s = verify.score_keras("check", qat, splits.x_val, splits.y_val)
    return np.argmax(s.outputs, axis=-1) == splits.y_val


def _accuracy(model, policy, splits, rep) -> float:
    return float(_right(model, policy, splits, rep).mean())


def _float_right(model, splits) -> np.ndarray:
    s = verify.score_keras("f", model, splits.x_val, splits.y_val)
    return np.argmax(s.outputs, axis=-1) == splits.y_val


def test_the_plan_fits_its_budget_and_its_numbers_are_measured(trained_model, splits):
    rep = splits.x_train[:128]
    f_right = _float_right(trained_model, splits)
    plan = mixed.search(trained_model, config.AnnotateConfig(), splits, rep,
                        verify.CLASSIFICATION, budget_pp=1.0, float_right=f_right,
                        rule="point", log=lambda *_: None)
    names = [l.name for l in plan.layers]
    # candidates: the convs and the dense; depthwise stays 8-bit (annotate.W4_INT8_LAYERS)
    assert names == ["block1_conv", "block2_pw_conv", "block3_pw_conv", "logits"]
    assert plan.to_dict()["within_budget"] and plan.drop_pp <= 1.0
    assert plan.int4, "on this model some layer fits at 4 bits within 1 pp"
    # the chosen plan, re-measured: the recipe's int8_weights and nothing else
    cfg = mixed.recipe(config.Config(), plan)
    assert Variant.QAT_W4A8 in cfg.convert.variants and Variant.QAT_INT8 not in \
        cfg.convert.variants
    assert sorted(cfg.annotate.int8_weights) == sorted(
        l.name for l in plan.layers if l.choice == "int8")
    assert cfg.gates.max_accuracy_drop_pp == 1.0
    assert _accuracy(trained_model, cfg.annotate, splits, rep) == plan.accuracy
    # each layer's cost: that layer alone at 4 bits vs all-8-bit
    all8 = config.AnnotateConfig(int8_weights=tuple(names))
    assert _accuracy(trained_model, all8, splits, rep) == plan.int8_accuracy
    one = plan.layers[0]
    alone = config.AnnotateConfig(int8_weights=tuple(n for n in names if n != one.name))
    assert one.cost_pp == pytest.approx(  # reported to 0.001 pp
        100 * (plan.int8_accuracy - _accuracy(trained_model, alone, splits, rep)), abs=5e-4)
    # the recipe round-trips through TOML (what `qat plan` writes, `qat run` reads)
    again = config.from_dict(__import__("tomllib").loads(cfg.to_toml()))
    assert again.annotate.int8_weights == cfg.annotate.int8_weights
    assert again.convert.variants == cfg.convert.variants


def _cancelling_mlp(env, splits):
    """A digits MLP whose head is ruined by per-tensor int8 but exact in float: hidden units
    30 and 31 are copies, and the head gives them +M and -M, which cancel in float while
    M / 127 becomes the head's int8 step (every other weight rounds to 0)."""
    from pipeline.core import keras_env

    keras = env.keras
    keras_env.set_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Dense(32, activation="relu", name="hidden")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(splits.x_train, splits.y_train, epochs=30, batch_size=64, verbose=0)
    (k, b) = model.get_layer("hidden").get_weights()
    (hk, hb) = model.get_layer("head").get_weights()
    k[:, 31], b[31] = k[:, 30], b[30]
    hk[30] += 1e4
    hk[31] = hk[30] - 2e4
    model.get_layer("hidden").set_weights([k, b])
    model.get_layer("head").set_weights([hk, hb])
    return model


def test_float_islands_when_all_int8_misses_the_budget(env, splits):
    model = _cancelling_mlp(env, splits)
    rep = splits.x_train[:128]
    f_right = _float_right(model, splits)
    f_acc = f_right.mean()
    assert f_acc > 0.85
    plan = mixed.search(model, config.AnnotateConfig(), splits, rep, verify.CLASSIFICATION,
                        budget_pp=2.0, float_right=f_right, rule="point", log=lambda *_: None)
    assert plan.int8_accuracy < f_acc - 0.5  # all-int8 is ruined by the head's range
    assert plan.float_layers == ["head"] and plan.to_dict()["within_budget"]
    cfg = mixed.recipe(config.Config(), plan)
    assert cfg.annotate.keep_float == ("head",)
    assert _accuracy(model, cfg.annotate, splits, rep) == plan.accuracy


def test_the_default_rule_judges_the_upper_end_of_the_paired_interval(trained_model, splits):
    """ci95: a plan fits when the paired 95 % interval's upper end of its drop vs float is
    within the budget, re-computed here from a fresh annotate of the chosen plan."""
    from pipeline.stages import stats

    rep = splits.x_train[:128]
    f_right = _float_right(trained_model, splits)
    plan = mixed.search(trained_model, config.AnnotateConfig(), splits, rep,
                        verify.CLASSIFICATION, budget_pp=3.0, float_right=f_right,
                        log=lambda *_: None)
    assert plan.rule == "ci95" and plan.fits
    cfg = mixed.recipe(config.Config(), plan)
    got = _right(trained_model, cfg.annotate, splits, rep)
    upper = -100 * stats.paired("plan", got, "float", f_right).ci95[0]
    assert plan.judged_drop_pp == pytest.approx(upper, abs=5e-4) and upper <= 3.0
    assert plan.judged_drop_pp >= plan.drop_pp  # the interval's end, not the point
    # a budget below what this validation split can resolve at 95 %: no search, all 8-bit
    floor = -100 * stats.paired("f", f_right, "f", f_right).ci95[0]
    tight = mixed.search(trained_model, config.AnnotateConfig(), splits, rep,
                         verify.CLASSIFICATION, budget_pp=floor / 2, float_right=f_right,
                         log=lambda *_: None)
    assert not tight.int4 and not tight.float_layers and tight.evaluations == 1
    assert f"cannot show a drop below {floor:.2f} pp" in tight.note
    with pytest.raises(ConfigError, match="Unknown plan rule"):
        mixed.search(trained_model, config.AnnotateConfig(), splits, rep,
                     verify.CLASSIFICATION, budget_pp=1.0, float_right=f_right, rule="x")
