"""Load stage: the model and the data, checked against each other before anything is
written or trained, the train/validation splits, and the QAT plan (a policy typo fails here).
"""

from __future__ import annotations

from pathlib import Path

import models
from pipeline.core import keras_env
from pipeline.core.errors import ConfigError, ModelFileError, QatError
from pipeline.keras import keras3, weights
from pipeline.stages import annotate, gates, modelio, verify
from pipeline.stages import data as data_mod
from pipeline.stages.config import Config
from pipeline.stages.results import Inputs, Splits

# generated zoo datasets are cached here, under the artifacts root (models/datacache.py)
DATA_CACHE = ".data"


def load_model(cfg: Config, model) -> modelio.LoadedModel:
    """The configured model (or the live ``model``), with finite weights and not QAT yet."""
    if model is not None:
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
    return loaded


def load_inputs(cfg: Config, log, model=None, dataset: data_mod.Dataset | None = None
                ) -> Inputs:
    """load: model and data checked against each other, the splits, and the QAT plan."""
    env = keras_env.load()
    keras_env.set_seed(cfg.seed)
    loaded = load_model(cfg, model)
    if dataset is None:
        data_name = cfg.data.name
        if not data_name and not cfg.data.path and loaded.kind == "zoo":
            data_name = models.get_model(cfg.model.name).dataset
        dataset = data_mod.load(data_name, cfg.data.path,
                                cache_dir=Path(cfg.output.dir) / DATA_CACHE,
                                train=cfg.data.train_samples, test=cfg.data.test_samples,
                                task=cfg.data.task)
    model_inputs, out_shape = model_io(loaded.model, cfg.data.output)
    dataset = data_mod.prepare(dataset, model_inputs, out_shape, cfg.data.task)
    check_task_config(cfg, dataset.task)
    splits = Splits(*data_mod.train_val_split(dataset.x_train, dataset.y_train,
                                              cfg.data.validation_split, cfg.seed))
    from_logits = not modelio.outputs_are_probabilities(loaded.model, cfg.data.output)
    # the QAT plan before any training: a policy typo fails here, and the user sees
    # which layers need fallbacks before waiting for training
    _, plan = annotate.prepare(loaded.model, cfg.annotate)
    s = plan.share()
    log(f"coverage: {s['layers_quantized']}/{s['layers']} layers, "
        f"{100 * s['params_quantized_share']:.1f} % of parameters quantized by QAT"
        + (f"; fallbacks: {plan.fallbacks()}" if plan.fallbacks() else ""))
    if dataset.task != "classification":
        log(f"task: {dataset.task} (data.task = {cfg.data.task}); targets "
            f"{list(dataset.y_test.shape[1:])}, output {list(out_shape[1:])}")
    task = verify.Task(dataset.task, from_logits, cfg.data.output)
    return Inputs(env, loaded, dataset, splits, from_logits, plan, task)


def model_io(model, output: str = "") -> tuple[list[tuple], tuple]:
    """The model's inputs as (name, shape, dtype) and the shape of its scored output
    (``output``: its name, "" = the first)."""
    names = list(getattr(model, "input_names", None) or [])
    inputs = []
    for k, t in enumerate(model.inputs):
        dtype = getattr(getattr(t, "dtype", None), "name", None) or str(getattr(t, "dtype", ""))
        inputs.append((names[k] if k < len(names) else getattr(t, "name", f"input_{k}"),
                       tuple(t.shape), dtype or None))
    out_names = list(getattr(model, "output_names", None) or [])
    k = 0
    if output:
        if output not in out_names:
            raise ConfigError("data.output names no output of the model", output,
                              f"Use one of {', '.join(out_names)}")
        k = out_names.index(output)
    return inputs, tuple(model.outputs[k].shape)


def check_task_config(cfg: Config, task: str) -> None:
    """Keys that do not fit the task, refused before any training."""
    gates.check_task(cfg.gates, task)
    if task == "regression" and cfg.qat.monitor == "val_accuracy":
        raise ConfigError("qat.monitor = val_accuracy does not apply to a regression model",
                          cfg.qat.monitor, "Use qat.monitor = \"val_loss\"")
