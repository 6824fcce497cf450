import json
import math

import numpy as np
import pytest

from pipeline.stages import annotate, finetune
from pipeline.core.artifacts import RunDir
from pipeline.stages.config import QatConfig
from pipeline.core.errors import TrainingError


def _split(digits, n=400):
    x, y = digits["x_train"], digits["y_train"]
    return x[:n], y[:n], x[n:n + 100], y[n:n + 100]


def test_nan_weights_before_training_blame_the_model_not_the_learning_rate(
        env, trained_model, digits, tmp_path):
    """A NaN weight handed to QAT is caught on the weights themselves before any step: with
    TensorFlow's oneDNN rewrites (AVX-512 VNNI / AMX CPUs, or TF_ENABLE_ONEDNN_OPTS=1) a fused
    op turns the NaN into 0 and the loss stays finite, so a loss check alone misses it."""
    qat, _ = annotate.apply(trained_model)
    x, y, xv, yv = _split(digits)
    kernel = next(w for w in qat.trainable_weights if "kernel" in w.name)
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    cfg = QatConfig(epochs=2, learning_rate=0.5, verbose=0)
    run = RunDir(tmp_path / "r", log=lambda *_: None)
    with pytest.raises(TrainingError) as err:
        finetune.fit(qat, x, y, xv, yv, cfg, run, from_logits=True)
    msg = str(err.value)
    assert "NaN/inf weights before training" in msg and kernel.name in msg
    assert f"{kernel.shape.num_elements()} NaN of {kernel.shape.num_elements()}" in msg
    assert "learning rate is not the cause" in msg and "qat.learning_rate=" not in msg
    assert not finetune.has_checkpoint(run)  # no checkpoint of a broken model


def test_divergence_during_training_stops_whatever_the_kernels(env, trained_model, digits,
                                                                tmp_path):
    """From finite weights, a step size of 1e30 overflows float32 within the first batches:
    the run stops with the learning rate named, either at the batch whose loss is NaN/inf or,
    where fused kernels keep the loss finite, at the end of the epoch on the weights. The
    config's own check refuses such a rate, so the test passes the fields directly."""
    import dataclasses
    import types

    qat, _ = annotate.apply(trained_model)
    x, y, xv, yv = _split(digits)
    cfg = types.SimpleNamespace(**{**dataclasses.asdict(QatConfig(epochs=2, verbose=0)),
                                   "learning_rate": 1e30, "lr_schedule": "constant"})
    run = RunDir(tmp_path / "r", log=lambda *_: None)
    with pytest.raises(TrainingError) as err:
        finetune.fit(qat, x, y, xv, yv, cfg, run, from_logits=True)
    msg = str(err.value)
    assert "qat.learning_rate=1e+30" in msg and "Lower qat.learning_rate" in msg
    assert ("loss became NaN/inf at epoch 1" in msg
            or "weights became NaN/inf during epoch 1" in msg), msg
    assert not finetune.has_checkpoint(run)


def test_checkpoint_resume_continues_optimizer_and_schedule(env, trained_model, digits,
                                                           tmp_path):
    x, y, xv, yv = _split(digits)
    steps = math.ceil(len(x) / 32)
    first, _ = annotate.apply(trained_model)
    run = RunDir(tmp_path / "r", log=lambda *_: None)
    res1 = finetune.fit(first, x, y, xv, yv,
                        QatConfig(epochs=2, early_stopping_patience=0, verbose=0), run,
                        from_logits=True)
    assert res1.epochs_run == 2 and res1.resumed_from == 0
    state = json.loads(run.path(finetune.STATE).read_text())
    assert state["epochs_done"] == 2 and len(state["history"]["loss"]) == 2
    run.abort(keep=True)  # as if the process had died here

    # A fresh process would rebuild the QAT model from the float model, then resume.
    second, _ = annotate.apply(trained_model)
    logs = []
    run2 = RunDir(tmp_path / "r", resume=True, log=logs.append)
    res2 = finetune.fit(second, x, y, xv, yv,
                        QatConfig(epochs=4, early_stopping_patience=0, verbose=0), run2,
                        from_logits=True, resume=True, log=logs.append)
    assert res2.resumed_from == 2 and res2.epochs_run == 2
    assert any("resumed after epoch 2" in l for l in logs)
    assert len(res2.history["loss"]) == 4
    # Adam's step counter continued from the checkpoint (it drives the cosine schedule).
    reader = env.tf.train.load_checkpoint(str(run2.path("checkpoints/epoch_004/ckpt")))
    assert int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == \
        4 * steps
    kept = sorted(p.name for p in run2.path(finetune.CKPT_DIR).glob("epoch_*"))
    assert "epoch_004" in kept and len(kept) <= 2


def test_early_stopping_restores_best_epoch(env, trained_model, digits, tmp_path):
    x, y, xv, yv = _split(digits)
    qat, _ = annotate.apply(trained_model)
    run = RunDir(tmp_path / "r", log=lambda *_: None)
    # A learning rate this high makes validation worse after the first epoch.
    cfg = QatConfig(epochs=6, learning_rate=0.05, lr_schedule="constant",
                    early_stopping_patience=1, monitor="val_loss", verbose=0)
    res = finetune.fit(qat, x, y, xv, yv, cfg, run, from_logits=True, log=lambda *_: None)
    losses = res.history["val_loss"]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    if res.stopped_early:
        assert res.epochs_run == res.best_epoch + 1
    # the model now holds the best epoch's weights: its val loss equals the best one
    qat.compile(loss=env.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert qat.evaluate(xv, yv, verbose=0) == pytest.approx(min(losses), rel=1e-3)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"epochs_done": "2"}',
                                     b'{"epochs_done": true, "best_epoch": 0, "wait": 0, '
                                     b'"stopped_early": false, "history": {}}',
                                     b"\xff\xfe", b"[" * 100_000],
                         ids=["not-json", "a-list", "wrong-type", "bool-as-int", "not-utf8",
                              "nested-100k"])
def test_damaged_progress_file_on_resume_is_a_usage_error(env, trained_model, digits,
                                                          tmp_path, content):
    """A resumed run's checkpoints/state.json that is not the progress record the pipeline
    writes: exit 2 with the file named, before anything is restored or trained."""
    from pipeline.core.errors import UsageError

    qat, _ = annotate.apply(trained_model)
    x, y, xv, yv = _split(digits, 64)
    run = RunDir(tmp_path / "r", log=lambda *_: None)
    run.path(finetune.STATE).parent.mkdir(parents=True, exist_ok=True)
    run.path(finetune.STATE).write_bytes(content)
    with pytest.raises(UsageError) as err:
        finetune.fit(qat, x, y, xv, yv, QatConfig(epochs=1, verbose=0), run,
                     from_logits=True, resume=True)
    assert "progress file of the run to resume is damaged" in str(err.value)
    assert "state.json" in str(err.value)
