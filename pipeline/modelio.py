"""Model loading: a zoo name or a Keras-2 file (.h5, tf_keras .keras, SavedModel directory).

Safety: a Lambda layer stores Python code (marshalled bytecode in .h5/SavedModel) that runs when
the model is deserialized, and tf_keras' ``safe_mode`` only guards the .keras format (see
tf_keras/src/layers/core/lambda_layer.py). So the stored config is read *as data* first and any
Lambda layer is refused unless ``trust_model`` is set.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ModelFileError


@dataclass
class LoadedModel:
    model: object             # a tf_keras Model
    source: str               # "zoo:NAME" or the file path
    kind: str                 # zoo | h5 | keras | savedmodel
    needs_training: bool      # zoo architectures ship untrained
    is_qat: bool = False      # the file already holds a quantize_apply'd model
    translation: object | None = None  # keras3.Translated for a Keras 3 model


def _find_lambdas(config) -> list[str]:
    """Names of Lambda layers anywhere in a (nested) Keras config."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                cfg = node.get("config") or {}
                found.append(str(cfg.get("name", "?")) if isinstance(cfg, dict) else "?")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found


def read_stored_config(path: str) -> tuple[str, dict | None, str | None]:
    """(kind, model config as JSON data, keras_version) without deserializing any layer."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError("The model file does not exist", path, "Check the path")
    if p.is_dir():
        meta = p / "keras_metadata.pb"
        if not (p / "saved_model.pb").is_file() and not (p / "saved_model.pbtxt").is_file():
            raise ModelFileError("The directory is not a SavedModel (no saved_model.pb)", path,
                                 "Pass a .h5/.keras file or a directory written by model.save()")
        if not meta.is_file():
            raise ModelFileError("The SavedModel has no Keras metadata (keras_metadata.pb); it "
                                 "was not saved from a Keras model", path,
                                 "Save the Keras model with tf_keras model.save(dir)")
        # SavedMetadata proto: each layer's JSON config is stored as a string field; scanning
        # the raw bytes for the Lambda class name is enough to refuse (never to accept) a file.
        blob = meta.read_bytes()
        lambdas = ["(in keras_metadata.pb)"] if b'"class_name": "Lambda"' in blob else []
        return "savedmodel", {"_lambdas": lambdas}, None
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                version = f.attrs.get("keras_version")
        except OSError:
            raise ModelFileError("The file is not a readable HDF5 model", path,
                                 "Save the model with tf_keras model.save('model.h5')")
        if raw is None:
            raise ModelFileError("The .h5 file holds weights only, no model architecture", path,
                                 "Save the whole model (model.save), not save_weights")
        raw = raw.decode() if isinstance(raw, bytes) else raw
        version = version.decode() if isinstance(version, bytes) else version
        return "h5", json.loads(raw), version
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ModelFileError("The .keras file is not a zip archive", path,
                                 "Save the model with model.save('model.keras')")
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise ModelFileError("The .keras archive has no config.json", path,
                                     "Save the model with model.save('model.keras')")
            config = json.loads(z.read("config.json"))
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
        return "keras", config, meta.get("keras_version")
    raise ModelFileError("Unsupported model file type", path,
                         "Pass a .h5, .keras file or a SavedModel directory")


def load_model(name: str = "", path: str = "", *, trust_model: bool = False,
               custom_objects: dict | None = None, seed: int = 0) -> LoadedModel:
    from pipeline import keras_env

    env = keras_env.load()
    if name:
        from models import get_model, zoo_names

        zoo = get_model(name)
        if zoo is None:
            raise ModelFileError("Unknown zoo model", name,
                                 f"Use one of {', '.join(zoo_names())} or pass a model file")
        return LoadedModel(zoo.build(env.keras), f"zoo:{name}", "zoo", needs_training=True)

    kind, config, keras_version = read_stored_config(path)
    if keras_version and str(keras_version).startswith("3."):
        # Keras 3: rebuilt as tf_keras and checked equal on random inputs (keras3.py). Lambda
        # layers are always refused there, --trust-model or not.
        if kind != "keras":
            raise ModelFileError("Only .keras files saved by Keras 3 are supported", path,
                                 "Re-save it with Keras 3: model.save('model.keras')")
        from pipeline import keras3

        t = keras3.translate_keras3_file(path, seed=seed)
        check_model_shape(t.model, path)
        return LoadedModel(t.model, os.fspath(path), "keras3", needs_training=False,
                           translation=t)
    lambdas = config.get("_lambdas", []) if kind == "savedmodel" else _find_lambdas(config)
    if lambdas and not trust_model:
        raise ModelFileError(
            f"The model contains Lambda layer(s) {', '.join(lambdas)} whose stored Python code "
            "would run on load", path,
            "Pass --trust-model only if you trust the file, or replace the Lambda with a "
            "built-in layer")
    keras = env.keras
    quantize_scope = env.tfmot.quantization.keras.quantize_scope
    from pipeline import fallbacks

    objects = {**fallbacks.custom_objects(), **(custom_objects or {})}  # QAT models' configs
    try:
        from tf_keras.src.saving import serialization_lib

        with quantize_scope(objects), \
                serialization_lib.SafeModeScope(not trust_model):
            model = keras.models.load_model(path, compile=False,
                                            **({"safe_mode": not trust_model}
                                               if kind == "keras" else {}))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fix = "Re-save the model with tf_keras"
        if "Unknown layer" in msg or "custom" in msg.lower():
            fix = ("Register the custom class with tf_keras.utils.register_keras_serializable "
                   "or load it in Python and pass custom_objects")
        raise ModelFileError("The Keras model could not be loaded", f"{path} ({msg[:200]})", fix)
    check_model_shape(model, path)
    is_qat = any(type(l).__name__.startswith("Quantize") for l in model.layers)
    return LoadedModel(model, os.fspath(path), kind, needs_training=False, is_qat=is_qat)


def check_model_shape(model, where: str) -> None:
    """What the pipeline needs: a Sequential/Functional model with one input and one output."""
    cls = type(model).__name__
    if not getattr(model, "_is_graph_network", False) and cls != "Sequential":
        raise ModelFileError(
            "Subclassed models cannot be annotated for QAT (tfmot needs Sequential or "
            "Functional)", f"{where} ({cls})",
            "Rebuild the model with keras.Input and layer calls (Functional API), then copy "
            "the weights with set_weights")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelFileError("Only single-input, single-output models are supported",
                             f"{where} ({len(model.inputs)} inputs, {len(model.outputs)} outputs)",
                             "Export the classification head as the only output")


def input_shape(model) -> tuple:
    return tuple(model.inputs[0].shape)


def output_size(model) -> int:
    shape = tuple(model.outputs[0].shape)
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def outputs_are_probabilities(model) -> bool:
    """True if the model ends in a softmax (so the loss must not apply one again)."""
    last = model.layers[-1]
    last = getattr(last, "layer", last)  # a QuantizeWrapper holds the real layer
    act = getattr(last, "activation", None)
    if act is not None and getattr(act, "__name__", "") == "softmax":
        return True
    return type(last).__name__ == "Softmax"
