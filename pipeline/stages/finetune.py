"""Fine-tune stage: QAT training with checkpoints, resume, early stopping and a NaN guard.

Also trains the float baseline of zoo models (they ship as architectures, without weights).

Checkpoints: after every epoch the model and optimizer (``tf.train.Checkpoint``: weights, Adam
slots, the step counter that drives the LR schedule) go to ``checkpoints/epoch_NNN/`` (written to
a temp directory, then renamed) and ``checkpoints/state.json`` records progress, the best epoch
and the early-stopping counter, so ``--resume`` continues a killed run where it stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field

from pipeline.core import keras_env
from pipeline.core.errors import TrainingError, UsageError, first_line
from pipeline.keras import weights

CKPT_DIR = "checkpoints"
STATE = f"{CKPT_DIR}/state.json"


@dataclass
class FitResult:
    epochs_run: int
    resumed_from: int
    best_epoch: int
    best_value: float | None
    stopped_early: bool
    history: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"epochs_run": self.epochs_run, "resumed_from_epoch": self.resumed_from,
                "best_epoch": self.best_epoch, "best_value": self.best_value,
                "stopped_early": self.stopped_early, "history": self.history}


def _verbose(v: int) -> int:
    if v >= 0:
        return v
    return 1 if sys.stdout.isatty() else 2


def _loss_and_metrics(keras, from_logits: bool | None):
    """Sparse cross-entropy and accuracy (classifiers; per token for (N, T, V) outputs);
    ``from_logits`` None: a regression head (mean squared error, MAE)."""
    if from_logits is None:
        return keras.losses.MeanSquaredError(), [keras.metrics.MeanAbsoluteError(name="mae")]
    # ignore_class: a sequence target of metrics.PAD (-1) is padding, not a token
    return (keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, ignore_class=-1),
            [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def _schedule(keras, lr: float, kind: str, total_steps: int):
    if kind == "cosine":
        # decays to 10 % of the initial rate over the planned steps
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps),
                                                      alpha=0.1)
    return lr


class _NanGuard:
    """Records where the loss or the weights stopped being finite (TerminateOnNaN only stops
    training)."""

    def __init__(self):
        self.where: tuple[int, int | None] | None = None  # (epoch, batch or None)
        self.bad: list = []  # the non-finite weights found at the end of that epoch
        self.epoch = 0


def _make_callbacks(keras, guard: _NanGuard, on_epoch_end):
    class Callback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            guard.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)) and guard.where is None:
                guard.where = (guard.epoch + 1, batch)
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            # the weights themselves, not only the loss: fused oneDNN kernels can turn a NaN
            # into 0 and keep the loss finite (pipeline/keras/weights.py)
            if guard.where is None:
                bad = weights.nonfinite(self.model)
                if bad:
                    guard.where, guard.bad = (epoch + 1, None), bad
                    self.model.stop_training = True
            if guard.where is None:
                on_epoch_end(self.model, epoch, dict(logs or {}))

    return [keras.callbacks.TerminateOnNaN(), Callback()]


def _raise_nan(guard: _NanGuard, what: str, lr: float, key: str):
    """Training diverged from finite weights (checked before training): the step size is
    the usual cause, so the message names it."""
    epoch, batch = guard.where
    where = (f"{what} loss became NaN/inf at epoch {epoch}, batch {batch}" if batch is not None
             else f"{what} weights became NaN/inf during epoch {epoch}")
    detail = f"{key}={lr}" + (f"; {weights.describe(guard.bad)}" if guard.bad else "")
    raise TrainingError(where, detail, f"Lower {key} (e.g. by 10x) or check the input scaling")


def check_finite_before(model, what: str) -> None:
    """Refuse to train a model that already holds NaN/inf weights: the fault is in the model
    given to the stage, not in the learning rate."""
    bad = weights.nonfinite(model)
    if bad:
        raise TrainingError(f"The {what} has NaN/inf weights before training, so training "
                            "cannot fix it", weights.describe(bad),
                            "Check the input model file (re-export it from a model whose "
                            "weights are finite); the learning rate is not the cause")


def train_float(model, x, y, x_val, y_val, *, epochs: int, learning_rate: float,
                batch_size: int, from_logits: bool, verbose: int = -1, patience: int = 10):
    """Train a zoo model's float baseline; keeps the weights of the best validation epoch."""
    keras = keras_env.load().keras
    check_finite_before(model, "float model")
    steps = epochs * math.ceil(len(x) / batch_size)
    loss, metrics = _loss_and_metrics(keras, from_logits)
    model.compile(keras.optimizers.Adam(_schedule(keras, learning_rate, "cosine", steps)),
                  loss, metrics)
    guard = _NanGuard()
    # val_loss, not val_accuracy: on small validation splits accuracy saturates and ties,
    # which stops training long before the model is good.
    stop = keras.callbacks.EarlyStopping("val_loss", mode="min", patience=patience,
                                         restore_best_weights=True)
    hist = model.fit(x, y, validation_data=(x_val, y_val), epochs=epochs, batch_size=batch_size,
                     shuffle=True, verbose=_verbose(verbose),
                     callbacks=_make_callbacks(keras, guard, lambda *a: None) + [stop])
    if guard.where is not None:
        _raise_nan(guard, "Float training", learning_rate, "model.float_learning_rate")
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def compile_qat(qat_model, cfg, steps_per_epoch: int, from_logits: bool):
    keras = keras_env.load().keras
    loss, metrics = _loss_and_metrics(keras, from_logits)
    sched = _schedule(keras, cfg.learning_rate, cfg.lr_schedule, cfg.epochs * steps_per_epoch)
    optimizer = keras.optimizers.Adam(sched)
    qat_model.compile(optimizer, loss, metrics)
    # Create the optimizer slots now so a checkpoint restores into them immediately.
    optimizer.build(qat_model.trainable_variables)
    return optimizer


def fit(qat_model, x, y, x_val, y_val, cfg, run_dir, *, from_logits: bool,
        resume: bool = False, log=print) -> FitResult:
    """QAT fine-tuning. ``cfg`` is a QatConfig; ``run_dir`` a RunDir (checkpoints go there)."""
    env = keras_env.load()
    tf, keras = env.tf, env.keras
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    check_finite_before(qat_model, "QAT model")
    optimizer = compile_qat(qat_model, cfg, steps_per_epoch, from_logits)
    ckpt = tf.train.Checkpoint(model=qat_model, optimizer=optimizer)
    state = {"epochs_done": 0, "best_epoch": 0, "best_value": None, "wait": 0,
             "stopped_early": False, "history": {}}
    if resume and run_dir.path(STATE).is_file():
        state = _resume(ckpt, run_dir, cfg, log)
    resumed_from = state["epochs_done"]
    guard = _NanGuard()
    if state["epochs_done"] < cfg.epochs and not state["stopped_early"]:
        qat_model.fit(x, y, validation_data=(x_val, y_val), epochs=cfg.epochs,
                      initial_epoch=state["epochs_done"], batch_size=cfg.batch_size,
                      shuffle=True, verbose=_verbose(cfg.verbose),
                      callbacks=_make_callbacks(keras, guard,
                                                _epoch_end(state, ckpt, run_dir, cfg)))
    if guard.where is not None:
        _raise_nan(guard, "QAT", cfg.learning_rate, "qat.learning_rate")
    if state["best_epoch"] and state["best_epoch"] != state["epochs_done"]:
        best = run_dir.path(f"{CKPT_DIR}/epoch_{state['best_epoch']:03d}/ckpt")
        tf.train.Checkpoint(model=qat_model).read(str(best)).expect_partial()
        log(f"QAT: restored the best epoch {state['best_epoch']} "
            f"({cfg.monitor}={state['best_value']:.4f})")
    return FitResult(state["epochs_done"] - resumed_from, resumed_from, state["best_epoch"],
                     state["best_value"], state["stopped_early"], state["history"])


def _resume(ckpt, run_dir, cfg, log) -> dict:
    """The progress of the run being resumed, with its last checkpoint read into ``ckpt``."""
    tf = keras_env.load().tf
    state = _read_state(run_dir.path(STATE))
    last = run_dir.path(f"{CKPT_DIR}/epoch_{state['epochs_done']:03d}/ckpt")
    try:
        ckpt.read(str(last)).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        msg = first_line(exc, 160)
        raise UsageError("The checkpoint of the run being resumed does not fit this model "
                         "(another model, or a changed file)", f"{last} ({msg})",
                         "Resume with the model the run started with, or drop --resume "
                         "to start over") from exc
    log(f"QAT: resumed after epoch {state['epochs_done']} (best epoch "
        f"{state['best_epoch']}, {cfg.monitor}={state['best_value']})")
    return state


def _epoch_end(state: dict, ckpt, run_dir, cfg):
    """After each epoch: checkpoint it, track the best epoch and early stopping in ``state``,
    write state.json and keep only the last and the best checkpoints."""
    mode_max = cfg.monitor == "val_accuracy"

    def better(v, best):
        return best is None or (v > best if mode_max else v < best)

    def on_epoch_end(model, epoch, logs):
        n = epoch + 1
        for k, v in logs.items():
            state["history"].setdefault(k, []).append(float(v))
        with run_dir.writing(f"{CKPT_DIR}/epoch_{n:03d}") as tmp:
            tmp.mkdir()
            ckpt.write(str(tmp / "ckpt"))
        value = logs.get(cfg.monitor)
        if value is not None and better(float(value), state["best_value"]):
            state.update(best_epoch=n, best_value=float(value), wait=0)
        else:
            state["wait"] += 1
        state["epochs_done"] = n
        if cfg.early_stopping_patience and state["wait"] >= cfg.early_stopping_patience:
            state["stopped_early"] = True
            model.stop_training = True
        run_dir.write_json(STATE, state)
        keep = {f"epoch_{n:03d}", f"epoch_{state['best_epoch']:03d}"}
        for d in run_dir.path(CKPT_DIR).glob("epoch_*"):
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    return on_epoch_end


_STATE_KEYS = {"epochs_done": int, "best_epoch": int, "wait": int, "stopped_early": bool,
               "history": dict}


def _read_state(path) -> dict:
    """The progress file of the run being resumed, checked: a damaged one is the user's to
    fix (start over), not a bug."""
    try:
        state = json.loads(path.read_bytes()[:1 << 20])
        ok = isinstance(state, dict) and all(
            isinstance(state.get(k), t) and not (t is int and isinstance(state.get(k), bool))
            for k, t in _STATE_KEYS.items()) and state["epochs_done"] >= 0 and (
            state.get("best_value") is None or isinstance(state["best_value"], (int, float)))
    except (OSError, ValueError, RecursionError):
        ok = False
    if not ok:
        raise UsageError("The checkpoint progress file of the run to resume is damaged", str(path),
                         "Run without --resume to start over (or delete the run directory)")
    return state


def has_checkpoint(run_dir) -> bool:
    return run_dir.path(STATE).is_file()

