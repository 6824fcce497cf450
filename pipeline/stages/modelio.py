"""Model loading: a zoo name or a Keras-2 file (.h5, tf_keras .keras, SavedModel directory).

Safety: a Lambda layer stores Python code (marshalled bytecode in .h5/SavedModel) that runs when
the model is deserialized, and tf_keras' ``safe_mode`` only guards the .keras format (see
tf_keras/src/layers/core/lambda_layer.py). So the stored config is read *as data* first and any
Lambda layer is refused unless ``trust_model`` is set.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from models import get_model, zoo_names
from pipeline.core import files, keras_env
from pipeline.core.errors import ModelFileError, first_line
from pipeline.keras import fallbacks, keras3
from pipeline.keras.stored import RESAVE, check_config, parse_json
from pipeline.tflite.names import output_position


@dataclass
class LoadedModel:
    model: object             # a tf_keras Model
    source: str               # "zoo:NAME" or the file path
    kind: str                 # zoo | h5 | keras | savedmodel
    needs_training: bool      # zoo architectures ship untrained
    is_qat: bool = False      # the file already holds a quantize_apply'd model
    translation: object | None = None  # keras3.Translated for a Keras 3 model


def _find_lambdas(config) -> list[str]:
    """Names of Lambda layers anywhere in a (nested) Keras config (iterative: a deeply nested
    config cannot overflow the stack)."""
    found = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                cfg = node.get("config") or {}
                found.append(str(cfg.get("name", "?")) if isinstance(cfg, dict) else "?")
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return found


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _savedmodel_lambdas(meta_path: Path, path) -> list[str]:
    """Lambda layers named in a SavedModel's keras_metadata.pb, parsed (a SavedMetadata proto
    whose nodes carry each layer's metadata as JSON), so reformatting the JSON (whitespace, key
    order, unicode escapes) cannot hide one."""
    blob = files.read_bytes(meta_path, "model", ModelFileError, "SavedModel's keras_metadata.pb")
    from google.protobuf.message import DecodeError

    proto = keras_env.saved_metadata_proto()
    try:
        proto.ParseFromString(blob)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFileError("The SavedModel's keras_metadata.pb is not a valid Keras metadata "
                             "file", f"{path} ({exc})", RESAVE)
    found = []
    for node in proto.nodes:
        meta = parse_json(node.metadata, path, f"metadata of {node.node_path or 'a node'}") \
            if node.metadata else {}
        names = _find_lambdas(meta)
        if names:
            found += [f"{n} ({node.node_path})" if node.node_path else n for n in names]
    return sorted(set(found))


def read_stored_config(path: str) -> tuple[str, dict | None, str | None]:
    """(kind, model config as JSON data, keras_version) without deserializing any layer.

    Every file is checked first (pipeline/core/files.py): a regular file (or a directory of them
    for a SavedModel) within the model size limit; .h5 must carry the HDF5 signature and a
    .keras archive must not expand past the limit or be a zip bomb."""
    p = Path(path)
    try:
        exists = os.path.lexists(p)
    except ValueError:
        exists = False
    if not exists:
        raise ModelFileError("The model file does not exist", path, "Check the path")
    if p.is_dir():
        return _read_savedmodel(p, path)
    suffix = p.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".keras"):
        files.check_file(p, "model", ModelFileError, "model file")
        raise ModelFileError("Unsupported model file type", path,
                             "Pass a .h5, .keras file or a SavedModel directory")
    st = files.check_file(p, "model", ModelFileError, "model file")
    if suffix in (".h5", ".hdf5"):
        files.check_hdf5_signature(p, ModelFileError, "model file", st.st_size)
        return _read_h5(path)
    return _read_keras_archive(path)


def _read_savedmodel(p: Path, path) -> tuple[str, dict, None]:
    """A SavedModel directory: only its Lambda layers are needed (see _savedmodel_lambdas)."""
    meta = p / "keras_metadata.pb"
    if not (p / "saved_model.pb").is_file() and not (p / "saved_model.pbtxt").is_file():
        raise ModelFileError("The directory is not a SavedModel (no saved_model.pb)", path,
                             "Pass a .h5/.keras file or a directory written by model.save()")
    if not os.path.lexists(meta):
        raise ModelFileError("The SavedModel has no Keras metadata (keras_metadata.pb); it "
                             "was not saved from a Keras model", path,
                             "Save the Keras model with tf_keras model.save(dir)")
    files.check_tree(p, "model", ModelFileError, "SavedModel directory")
    return "savedmodel", {"_lambdas": _savedmodel_lambdas(meta, path)}, None


def _read_h5(path) -> tuple[str, dict, str | None]:
    import h5py  # lazy: only .h5 models need it

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            version = f.attrs.get("keras_version")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelFileError("The file is not a readable HDF5 model", path,
                             "Save the model with tf_keras model.save('model.h5') "
                             f"({first_line(exc, 120)})")
    if raw is None:
        raise ModelFileError("The .h5 file holds weights only, no model architecture", path,
                             "Save the whole model (model.save), not save_weights")
    config = check_config(parse_json(raw, path, "config (model_config)"), path,
                          "config (model_config)")
    return "h5", config, _text(version)


def _read_keras_archive(path) -> tuple[str, dict, str | None]:
    if not zipfile.is_zipfile(path):
        raise ModelFileError("The .keras file is not a zip archive", path,
                             "Save the model with model.save('model.keras')")
    try:
        with zipfile.ZipFile(path) as z:
            files.check_zip(z, path, "model", ModelFileError, ".keras archive")
            names = set(z.namelist())
            if "config.json" not in names:
                raise ModelFileError("The .keras archive has no config.json", path,
                                     "Save the model with model.save('model.keras')")
            config = check_config(parse_json(z.read("config.json"), path, "config.json"),
                                  path, "config.json")
            meta = parse_json(z.read("metadata.json"), path, "metadata.json") \
                if "metadata.json" in names else {}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError,
            NotImplementedError) as exc:
        raise ModelFileError("The .keras archive cannot be read", f"{path} ({type(exc).__name__}: "
                             f"{str(exc)[:120]})", "Save the model with model.save('model.keras')")
    if not isinstance(meta, dict):
        raise ModelFileError("The .keras archive's metadata.json is not a JSON object",
                             f"{path} (a JSON {type(meta).__name__})", RESAVE)
    return "keras", config, _text(meta.get("keras_version"))


def load_model(name: str = "", path: str = "", *, trust_model: bool = False,
               custom_objects: dict | None = None, seed: int = 0) -> LoadedModel:
    """A zoo architecture (``name``) or the model stored at ``path``, as a tf_keras model; a
    Keras 3 .keras file is translated (keras3.py)."""
    env = keras_env.load()
    if name:
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
    objects = {**fallbacks.custom_objects(), **(custom_objects or {})}  # QAT models' configs

    def load():
        with env.tfmot.quantization.keras.quantize_scope(objects):
            return env.keras.models.load_model(path, compile=False,
                                               **({"safe_mode": not trust_model}
                                                  if kind == "keras" else {}))

    try:
        model = keras_env.call_in_safe_mode(load, not trust_model)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        msg = first_line(exc, None)
        fix = "Re-save the model with tf_keras"
        if "Unknown layer" in msg or "custom" in msg.lower():
            fix = ("Register the custom class with tf_keras.utils.register_keras_serializable "
                   "or load it in Python and pass custom_objects")
        raise ModelFileError("The Keras model could not be loaded", f"{path} ({msg[:200]})", fix)
    check_model_shape(model, path)
    is_qat = any(type(l).__name__.startswith("Quantize") for l in model.layers)
    return LoadedModel(model, os.fspath(path), kind, needs_training=False, is_qat=is_qat)


def check_model_shape(model, where: str) -> None:
    """What the pipeline needs: a Sequential/Functional model with one or several inputs
    (fed by name) and one or several outputs (data.output names the one trained and scored)."""
    cls = type(model).__name__
    if not getattr(model, "_is_graph_network", False) and cls != "Sequential":
        raise ModelFileError(
            "Subclassed models cannot be annotated for QAT (tfmot needs Sequential or "
            "Functional)", f"{where} ({cls})",
            "Rebuild the model with keras.Input and layer calls (Functional API), then copy "
            "the weights with set_weights")
    inputs = list(getattr(model, "inputs", None) or [])
    outputs = list(getattr(model, "outputs", None) or [])
    if not inputs:
        raise ModelFileError("The model has no inputs (it was saved unbuilt, without an input "
                             "shape)", f"{where} ({cls})",
                             "Build it with keras.Input(shape=...) as its first layer (or call "
                             "model.build) and save it again")
    if not outputs:
        raise ModelFileError("The model has no outputs", f"{where} ({cls})",
                             "Save a model built with keras.Model(inputs, outputs)")


def input_shape(model) -> tuple:
    """The first input's shape (the only one, for most models)."""
    return tuple(model.inputs[0].shape)


def input_shapes(model) -> dict[str, list]:
    """{input name: per-sample shape} for every input."""
    return {name: [None if d is None else int(d) for d in t.shape[1:]]
            for name, t in zip(model.input_names, model.inputs)}


def output_index(model, output: str = "") -> int:
    """The position of the output named ``output`` ("" = the first)."""
    names = list(getattr(model, "output_names", None) or [])
    k = output_position(names, output) if output else None
    return 0 if k is None else k


def output_size(model, output: str = "") -> int:
    shape = tuple(model.outputs[output_index(model, output)].shape)
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def scored_view(model, output: str = ""):
    """``model`` itself when it has one output; otherwise a Model over the same layers (the
    same weights) ending at the output named ``output``: what training fits, since the data
    holds targets for that output only. The other heads are carried, not trained."""
    if len(model.outputs) == 1:
        return model
    keras = keras_env.load().keras
    return keras.Model(model.inputs, model.outputs[output_index(model, output)],
                       name=f"{model.name}_scored")


def outputs_are_probabilities(model, output: str = "") -> bool:
    """True if the scored output comes from a softmax (so the loss must not apply one again)."""
    last = model.layers[-1]
    if len(model.outputs) > 1:
        last = model.outputs[output_index(model, output)]._keras_history.layer
    last = getattr(last, "layer", last)  # a QuantizeWrapper holds the real layer
    act = getattr(last, "activation", None)
    if act is not None and getattr(act, "__name__", "") == "softmax":
        return True
    return type(last).__name__ == "Softmax"
