"""Shared fixtures: real data (scikit-learn's digits) and tiny real models, built once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Before anything imports TensorFlow (tests may import tf directly): the product's own
# defaults, from the module that sets them (Keras 2, quiet C++ logs, oneDNN rewrites off
# unless TF_ENABLE_ONEDNN_OPTS is set: CI runs the suite both ways).
import pipeline.core.keras_env  # noqa: E402,F401  (sets variables only; imports no TensorFlow)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def env():
    from pipeline.core import keras_env

    return keras_env.load()


@pytest.fixture(scope="session")
def digits():
    from models.digits_cnn import load_dataset

    return load_dataset()


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory, digits) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, **{k: v for k, v in digits.items() if k != "preprocessing"})
    return path


@pytest.fixture(scope="session")
def trained_model(env, digits):
    """digits_cnn trained briefly (seeded): a real float model, accurate enough to compare."""
    from models.digits_cnn import build
    from pipeline.stages import finetune
    from pipeline.core import keras_env

    keras_env.set_seed(0)
    model = build(env.keras)
    x, y = digits["x_train"], digits["y_train"]
    finetune.train_float(model, x[:1200], y[:1200], x[1200:], y[1200:], epochs=25,
                         learning_rate=3e-3, batch_size=32, from_logits=True, verbose=0)
    return model


@pytest.fixture(scope="session")
def trained_h5(tmp_path_factory, trained_model) -> Path:
    from pipeline.stages.run import _save_h5

    path = tmp_path_factory.mktemp("models") / "digits_float.h5"
    _save_h5(trained_model, path)
    return path


def _qat(trained_model, digits, tmp_path_factory, weight_bits: int):
    """The QAT model built the way `qat run` builds it: annotate, activation ranges from 256
    training samples, then fine-tuned (2 epochs of the product's recipe). An annotated model
    that is neither range-initialised nor trained has an input range of [0, 0] and outputs
    one constant vector: nothing to compare."""
    from pipeline.stages import annotate, data, finetune
    from pipeline.core import keras_env
    from pipeline.keras import ranges
    from pipeline.core.artifacts import RunDir
    from pipeline.stages.config import QatConfig

    keras_env.set_seed(0)
    model, _ = annotate.apply(trained_model, weight_bits=weight_bits)
    x, y = digits["x_train"], digits["y_train"]
    ranges.init_ranges(model, data.representative_sample(x[:1200], 256, 0))
    run = RunDir(tmp_path_factory.mktemp("qat_fixture") / "run", log=lambda *_: None)
    # 4-bit weights need a larger step than 8-bit ones to settle on their coarser grid
    finetune.fit(model, x[:1200], y[:1200], x[1200:], y[1200:],
                 QatConfig(epochs=2, early_stopping_patience=0, verbose=0,
                           learning_rate=3e-4 if weight_bits == 4 else 3e-5), run,
                 from_logits=True, log=lambda *_: None)
    run.abort(keep=False)
    return model


@pytest.fixture(scope="session")
def qat_model(env, trained_model, digits, tmp_path_factory):
    """trained_model through 8-bit QAT (qat_int8's source)."""
    return _qat(trained_model, digits, tmp_path_factory, 8)


@pytest.fixture(scope="session")
def qat_w4_model(env, trained_model, digits, tmp_path_factory):
    """trained_model through QAT with 4-bit weights and 8-bit activations (qat_w4a8's)."""
    return _qat(trained_model, digits, tmp_path_factory, 4)


@pytest.fixture(scope="session")
def tflite_variants(trained_model, qat_model, qat_w4_model, digits):
    """Every variant's bytes of the same trained model (qat_int8 / qat_w4a8 from its 8-bit /
    4-bit QAT fine-tune); the peers (aeq_int8, the 4-bit and weight-only ones) when
    ai-edge-quantizer is installed."""
    from pipeline.stages import convert, peers
    from pipeline.core.records import Variant

    rep = digits["x_train"][:100]
    source = {Variant.QAT_INT8: qat_model, Variant.QAT_W4A8: qat_w4_model}
    return {v: convert.convert(v, source.get(v, trained_model), representative=rep)
            for v in Variant if (not v.is_peer or peers.available())
            and v is not Variant.AEQ_MIXED}  # aeq_mixed needs a plan: test_mixed_ptq


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, env):
    """The README's main job (`qat run digits_cnn`), run once: (exit code, run directory)."""
    from pipeline.cli.app import main, parse_args

    out = tmp_path_factory.mktemp("demo")
    code = main(parse_args(["run", "digits_cnn", "--output", str(out), "--quiet"]))
    return code, out / "digits_cnn"


@pytest.fixture(scope="session")
def w4_run(tmp_path_factory, env):
    """`qat run digits_cnn` at 4-bit weights (convert.variants float32, ptq_int8, qat_w4a8;
    the peers join when installed), 2 QAT epochs at the 4-bit step, gates opened (the
    tests judge the run's contents), run once: (exit code, run directory)."""
    from pipeline.cli.app import main, parse_args

    out = tmp_path_factory.mktemp("w4")
    code = main(parse_args([
        "run", "digits_cnn", "--output", str(out), "--quiet",
        "--set", "convert.variants=float32,ptq_int8,qat_w4a8", "--set", "qat.epochs=2",
        "--set", "qat.learning_rate=0.001", "--set", "gates.max_accuracy_drop_pp=100",
        "--set", "gates.min_agreement=0"]))
    return code, out / "digits_cnn"


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory, env):
    """`qat run char_lm` on a slice (300 train / 40 test windows, one float and one QAT
    epoch, no peer, gates opened: quality is not the point on a slice), run once:
    (exit code, run directory)."""
    from pipeline.cli.app import main, parse_args

    out = tmp_path_factory.mktemp("lm")
    code = main(parse_args([
        "run", "char_lm", "--output", str(out), "--quiet",
        "--set", "data.train_samples=300", "--set", "data.test_samples=40",
        "--set", "model.float_epochs=1", "--set", "convert.peers=off",
        "--set", "gates.min_float_accuracy=0", "--set", "gates.max_accuracy_drop_pp=100",
        "--set", "gates.min_agreement=0", "--set", "gates.max_perplexity_increase_pct=1000"]))
    return code, out / "char_lm"


def run_cli(*args: str, cwd: Path | None = None, env_extra: dict | None = None,
            timeout: int = 300, module: str = "pipeline") -> subprocess.CompletedProcess:
    """Run ``python -m <module> ARGS`` in a child process (the real console entry)."""
    env = {**os.environ, **(env_extra or {})}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def next_auto_name(keras, cls: str = "Conv2D") -> str:
    """The name tf_keras (``keras``) gives the next unnamed ``cls`` layer in this process:
    a layer given that name explicitly collides with the next automatic one."""
    import re

    probe = getattr(keras.layers, cls)(1, 1).name  # takes one name: the next is one further
    base, n = re.fullmatch(r"(.+?)(?:_(\d+))?", probe).groups()
    return f"{base}_{int(n or 0) + 1}"


# Fixtures that train a model or run the demo (10-50 s each, once per session or module): a
# test that uses one, directly or through another fixture (trained_h5, tflite_variants, ...),
# is marked slow, so `make test-quick` (-m "not slow") never starts them.
SLOW_FIXTURES = frozenset({"trained_model", "qat_model", "demo_run", "keras3_model_file",
                           "lm_run", "w4_run"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the slow marks must be there by then
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test`: `-n 2 --dist loadgroup`), every test that needs the
    demo run (or the char_lm slice run) goes to one worker, so that run is made once; every
    other test goes with the rest of its module, so a module-scoped fixture (a trained
    transformer, a converted model) is made once too.

    QAT_TEST_ORDER=reverse runs the suite backwards: no result may depend on test order
    (process-wide state such as tf_keras' layer-name counters or TensorFlow's op determinism
    must not leak from one test into another's assertions)."""
    if os.environ.get("QAT_TEST_ORDER") == "reverse":
        items.reverse()
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        shared = [name for name in ("demo_run", "lm_run", "w4_run") if name in fixtures]
        item.add_marker(pytest.mark.xdist_group(shared[0] if shared else item.module.__name__))
        if fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
