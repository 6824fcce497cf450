"""Keras 3 in: a .keras file saved by Keras 3, or a live Keras 3 model, rebuilt as tf_keras.

tfmot 0.8 quantizes only Keras 2 (tf_keras) models (tfmot issues #1119, #1270, #1144), so a
Keras 3 model is rebuilt: its config is translated to tf_keras' format (graph and nodes in
keras3_graph.py, layer arguments in keras3_config.py), the weights are copied layer by layer
with names and shapes checked, and both models must agree on seeded random inputs before the
tf_keras model is returned: model outputs within 1e-5 of their scale max(1, max|y|) (the float
tolerance in docs/architecture.md) and every layer's output within 1e-5 of that layer's own scale, because random-init
networks shrink the signal so much that their softmax outputs alone would hide a wrong layer.

Keras 3 is the ``keras`` package, imported through keras_env.load_keras3(); it lives next to
tf_keras in the same environment (TF_USE_LEGACY_KERAS=1 only decides what ``tf.keras`` is).

Usage::

    from pipeline.keras import keras3
    t = keras3.translate_keras3_file("model.keras")   # or keras3.to_tf_keras(live_model)
    t.model, t.max_abs_diff, t.notes
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import files, keras_env
from pipeline.core.errors import ModelFileError, first_line
from pipeline.keras.keras3_graph import model_kind, translate
from pipeline.keras.stored import check_config, parse_json

ATOL = 1e-5  # docs/architecture.md, Tolerances: float conversion ~1e-5


@dataclass(frozen=True)
class Translated:
    model: object          # the tf_keras model
    max_abs_diff: float    # Keras 3 vs tf_keras model outputs on seeded random inputs
    max_layer_rel_diff: float  # max over layers of max|diff| / max|Keras 3 output|
    layers: int            # Keras 3 layers and ops translated (nested models included)
    notes: tuple = ()      # what was rewritten or dropped, one line each
    output_scale: float = 1.0  # max |Keras 3 output|: max_abs_diff is judged against it


def is_keras3_model(obj) -> bool:
    """True for a live Keras 3 model (any keras.Model subclass), without importing Keras."""
    return any(c.__name__ == "Model" and c.__module__.startswith("keras.src.models")
               for c in type(obj).__mro__)


def keras3_file_version(path) -> str | None:
    """keras_version from a .keras archive's metadata.json, or None (not a readable .keras)."""
    try:
        with zipfile.ZipFile(path) as z:
            if "metadata.json" not in z.namelist():
                return None
            if z.getinfo("metadata.json").file_size > 1 << 20:  # a few hundred bytes if real
                return None
            return str(json.loads(z.read("metadata.json")).get("keras_version") or "") or None
    except (OSError, zipfile.BadZipFile, ValueError, AttributeError, RecursionError):
        return None


def is_keras3_file(path) -> bool:
    """A .keras file written by Keras 3 (metadata.json keras_version "3.x")."""
    return str(keras3_file_version(path) or "").startswith("3.")


def _unsafe_entries(node, found):
    """Lambda layers and serialized Python lambdas anywhere in a Keras 3 config (as data)."""
    if isinstance(node, dict):
        if node.get("class_name") == "Lambda":
            cfg = node.get("config")
            found.append(str(cfg.get("name", "?")) if isinstance(cfg, dict) else "?")
            return found
        if node.get("class_name") == "__lambda__":  # e.g. activation=lambda x: ...
            found.append("a Python lambda")
            return found
        for v in node.values():
            _unsafe_entries(v, found)
    elif isinstance(node, list):
        for v in node:
            _unsafe_entries(v, found)
    return found


def read_keras3_file(path, custom_objects: dict | None = None):
    """Load a Keras 3 .keras file as a Keras 3 model, never running code stored in it.

    The config is read as data first and any Lambda refused (its marshalled bytecode would
    run on load); Keras 3 itself then loads with safe_mode=True, which also refuses lambdas
    and imports classes only from keras packages (keras/src/saving/serialization_lib.py)."""
    p = Path(path)
    if not os.path.lexists(p):
        raise ModelFileError("The model file does not exist", path, "Check the path")
    files.check_file(p, "model", ModelFileError, "model file")
    version = keras3_file_version(p)
    if not str(version or "").startswith("3."):
        raise ModelFileError("The file is not a .keras archive saved by Keras 3 (metadata.json "
                             "keras_version 3.x)", f"{path} (keras_version {version})",
                             "Save it with Keras 3 model.save('model.keras'), or load a "
                             "Keras 2 file with modelio.load_model")
    with zipfile.ZipFile(p) as z:
        files.check_zip(z, p, "model", ModelFileError, ".keras archive")
        if "config.json" not in z.namelist():
            raise ModelFileError("The .keras archive has no config.json", path,
                                 "Save the whole model with model.save('model.keras')")
        config = check_config(parse_json(z.read("config.json"), path, "config.json"), path,
                              "config.json")
    unsafe = _unsafe_entries(config, [])
    if unsafe:
        raise ModelFileError(
            f"The Keras 3 model contains Lambda layer(s) or Python lambdas "
            f"({', '.join(unsafe)}) whose stored code would run on load; it was not loaded",
            path, "Replace the Lambda with built-in layers (or a registered custom layer) in "
            "Keras 3 and re-save")
    keras3 = keras_env.load_keras3()
    try:
        return keras3.saving.load_model(os.fspath(p), custom_objects=custom_objects,
                                        compile=False, safe_mode=True)
    except (ValueError, TypeError, KeyError, OSError, AttributeError) as exc:
        msg = first_line(exc)
        raise ModelFileError("Keras 3 could not load the .keras file",
                             f"{path}, keras_version {version} ({msg})",
                             "Import and register custom classes (keras.saving."
                             "register_keras_serializable) or pass custom_objects")


def translate_keras3_file(path, *, custom_objects: dict | None = None, **kwargs) -> Translated:
    """read_keras3_file + to_tf_keras; kwargs go to to_tf_keras."""
    return to_tf_keras(read_keras3_file(path, custom_objects), **kwargs)


def to_tf_keras(model3, *, seed: int = 0, samples: int = 2, atol: float = ATOL,
                rtol: float = ATOL, tf_keras_objects: dict | None = None) -> Translated:
    """Rebuild a Keras 3 Sequential/Functional model as tf_keras and prove they agree.

    tf_keras_objects maps a Keras 3 custom class name to a tf_keras layer class taking the same
    config and weights, for layers with no built-in equivalent."""
    if not is_keras3_model(model3):
        raise ModelFileError("Expected a Keras 3 model (keras.Model)",
                             f"{type(model3).__module__}.{type(model3).__name__}",
                             "Pass a model built with `import keras` (Keras 3), or give a "
                             "tf_keras model straight to the pipeline")
    model_kind(model3)  # subclassed models: a clear error before anything else
    keras3, env = keras_env.load_keras3(), keras_env.load()
    if not model3.built or not model3.inputs:
        raise ModelFileError("The Keras 3 model is not built (no inputs)", model3.name,
                             "Start it with keras.Input(shape) or call model.build(shape)")
    res = translate(model3, keras3, env.keras, tf_keras_objects)
    custom = dict(tf_keras_objects or {})
    try:
        model2 = _rebuild(env.keras, res.config, custom)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        msg = first_line(exc)
        culprit = _failing_layer(env.keras, res.config, custom)
        raise ModelFileError("tf_keras could not rebuild the translated model",
                             f"{culprit}: {msg}" if culprit else msg,
                             "Report it with the model; rebuild that layer in tf_keras (or "
                             "replace it with built-in layers) meanwhile")
    _copy_weights(model3, model2, res.transforms)
    diff, rel, scale = compare_outputs(model3, model2, seed=seed, samples=samples, atol=atol,
                                       rtol=rtol, aliases=res.aliases)
    return Translated(model2, diff, rel, res.count, tuple(res.notes), scale)


def _rebuild(tfk, config: dict, custom: dict):
    return tfk.models.model_from_json(json.dumps(config), custom_objects=custom)


def _failing_layer(tfk, config: dict, custom: dict) -> str | None:
    """"layer 'NAME' (CLASS)" for the first layer tf_keras cannot construct or call, or None.

    Each layer is first constructed alone from its config; if all construct, the layers list
    (in graph order) is cut after layer k and rebuilt as a model ending there, bisecting for
    the first k that fails (rebuilding is monotone: a failing prefix fails when extended)."""
    if config.get("class_name") != "Functional":
        entries = config.get("config", {}).get("layers", [])
        config = None  # a Sequential: construction is all that can be checked per layer
    else:
        entries = config["config"]["layers"]

    def where(e):
        return f"layer '{e['config'].get('name', e.get('name'))}' ({e['class_name']})"

    for e in entries:
        try:
            tfk.layers.deserialize({"class_name": e["class_name"], "config": e["config"]},
                                   custom_objects=custom)
        except (ValueError, TypeError, KeyError, AttributeError):
            return where(e)
    if config is None or not entries:
        return None

    def fails(k: int) -> bool:
        head = entries[:k]
        names = {e["name"] for e in head}
        last = head[-1]
        node = 1 if last["class_name"] in ("Functional", "Sequential") else 0
        cfg = {**config["config"], "layers": head, "output_layers": [[last["name"], node, 0]],
               "input_layers": [r for r in config["config"]["input_layers"] if r[0] in names]}
        try:
            _rebuild(tfk, {"class_name": "Functional", "config": cfg}, custom)
            return False
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            return True

    lo, hi = 1, len(entries)  # the whole list fails; find the shortest failing prefix
    if not fails(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fails(mid) else (mid + 1, hi)
    return where(entries[lo - 1])


def _base(name: str) -> str:
    return name.split("/")[-1].split(":")[0]


def _copy_weights(m3, m2, transforms):
    """Copy weights layer by layer (matched by name), checking count, names and shapes."""
    for l3 in m3.layers:
        if not l3.weights:
            continue
        try:
            l2 = m2.get_layer(l3.name)
        except ValueError:
            raise ModelFileError("A layer with weights is missing from the translated model",
                                 f"layer '{l3.name}' ({type(l3).__name__})",
                                 "Report it with the model")
        if model_kind(l3, strict=False):
            _copy_weights(l3, l2, transforms)
            continue
        values = l3.get_weights()
        names3 = [_base(w.name) for w in l3.weights]
        if transforms.get(f"{m3.name}/{l3.name}") == "layer_scale_to_depthwise":
            values, names3 = [values[0].reshape(1, 1, -1, 1)], ["kernel"]
        dst = l2.weights
        where = f"layer '{l3.name}' ({type(l3).__name__})"
        if len(dst) != len(values):
            raise ModelFileError("The translated layer has a different number of weights",
                                 f"{where}: Keras 3 {names3}, tf_keras "
                                 f"{[_base(w.name) for w in dst]}", "Report it with the model")
        for n3, v, w in zip(names3, values, dst):
            n2 = _base(w.name)
            if tuple(v.shape) != tuple(w.shape):
                raise ModelFileError("Weight shapes differ between Keras 3 and tf_keras",
                                     f"{where} weight {n3}: Keras 3 {tuple(v.shape)}, tf_keras "
                                     f"{tuple(w.shape)}", "Check the layer's arguments "
                                     "(e.g. data_format, groups) and report it with the model")
            # Keras 3 names unnamed weights 'variable_N'; DepthwiseConv2D 'kernel' is tf_keras'
            # 'depthwise_kernel': a suffix match covers the renames, anything else is a mix-up.
            if not n3.startswith("variable") and not (n2.endswith(n3) or n3.endswith(n2)):
                raise ModelFileError("Weight names differ between Keras 3 and tf_keras",
                                     f"{where}: Keras 3 {n3}, tf_keras {n2}",
                                     "Report it with the model")
        l2.set_weights(values)
        # tf_keras Normalization caches mean/variance as tensors computed from its weights
        # (tf_keras/src/layers/preprocessing/normalization.py finalize_state).
        if callable(getattr(l2, "finalize_state", None)):
            l2.finalize_state()


def _id_range(model2, t) -> int:
    """Integer inputs are mostly ids read by Embedding layers: draw them from [0, the smallest
    input_dim of the Embeddings reading ``t``) so every row can be looked up; else {0, 1}."""
    dims = [layer.input_dim for layer in model2.layers if type(layer).__name__ == "Embedding"
            for node in layer._inbound_nodes if any(x is t for x in node.keras_inputs)]
    return max(2, min(dims)) if dims else 2


def _random_inputs(model2, seed: int, samples: int) -> list:
    rng = np.random.default_rng(seed)
    xs = []
    for t in model2.inputs:
        shape = [t.shape[0] or samples] + [d if d is not None else 32 for d in t.shape[1:]]
        dtype = t.dtype.as_numpy_dtype
        xs.append(rng.standard_normal(shape).astype(dtype) if t.dtype.is_floating
                  else rng.integers(0, _id_range(model2, t), shape).astype(dtype))
    return xs


def _probe_pairs(model3, model2, aliases) -> list:
    """(Keras 3 layer, its output tensor, the tf_keras output tensor) for every single-call
    layer of the top-level graph, in Keras 3 graph order."""
    pairs = []
    for op in getattr(model3, "operations", model3.layers):
        if type(op).__name__ == "InputLayer" or len(op._inbound_nodes) != 1:
            continue
        try:
            l2 = model2.get_layer(aliases.get(op.name, op.name))
            # node 0 of a nested tf_keras model is its own internal node (see keras3_config)
            node2 = 1 if getattr(l2, "_is_graph_network", False) else 0
            pairs.append((op, op._inbound_nodes[0].output_tensors[0], l2.get_output_at(node2)))
        except (ValueError, IndexError, AttributeError, RuntimeError):
            continue
    return pairs


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a|: random-init networks shrink activations to ~1e-11 before the
    head (measured on MobileNetV3Small), so absolute differences alone would prove nothing."""
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    d = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(a)))
    return d / scale if scale > 0 else d


def compare_outputs(model3, model2, *, seed: int = 0, samples: int = 2, atol: float = ATOL,
                    rtol: float = ATOL, aliases: dict | None = None
                    ) -> tuple[float, float, float]:
    """(max abs diff of the model outputs, max relative diff over every layer's output, the
    outputs' scale max|y|) on seeded random inputs. The outputs must agree within atol of
    max(1, scale): float32 keeps ~7 digits, and two builds of the same network (other kernels,
    other fusions: oneDNN's rewrites) sum in other orders, so logits of magnitude 30 differ by
    a few 1e-6 while a wrong layer is off by far more. Over atol / rtol raises ModelFileError
    naming the first layer, in graph order, whose output differs."""
    keras3, env = keras_env.load_keras3(), keras_env.load()
    xs = _random_inputs(model2, seed, samples)
    feed = xs if len(xs) > 1 else xs[0]
    pairs = _probe_pairs(model3, model2, aliases or {})
    ys3 = ys2 = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras 3: "structure of inputs doesn't match" ([x])
        out3 = keras3.tree.flatten(model3(feed, training=False))
        if pairs:
            ys3 = keras3.tree.flatten(keras3.Model(model3.inputs, [p[1] for p in pairs])(
                feed, training=False))
    out3 = [keras3.ops.convert_to_numpy(o).astype(np.float64) for o in out3]
    out2 = [np.asarray(o) for o in env.tf.nest.flatten(model2(feed, training=False))]
    if pairs:
        ys2 = env.tf.nest.flatten(env.keras.Model(model2.inputs, [p[2] for p in pairs])(
            feed, training=False))
    if len(out3) != len(out2) or any(a.shape != b.shape for a, b in zip(out3, out2)):
        raise ModelFileError("The translated model's outputs have other shapes",
                             f"Keras 3 {[a.shape for a in out3]}, tf_keras "
                             f"{[b.shape for b in out2]}", "Report it with the model")
    diff = max((float(np.max(np.abs(a - b))) if a.size else 0.0) for a, b in zip(out3, out2))
    scale = max((float(np.max(np.abs(a))) if a.size else 0.0) for a in out3)
    worst, first = 0.0, None
    for (op, _, _), a, b in zip(pairs, ys3, ys2):
        r = _rel(keras3.ops.convert_to_numpy(a).astype(np.float64), np.asarray(b))
        if first is None and not r <= rtol:
            first = (f"first differing layer '{op.name}' ({type(op).__name__}), relative "
                     f"diff {r:.3g}")
        worst = max(worst, r)
    if not diff <= atol * max(1.0, scale) or first:  # "not <=" also catches NaN
        raise ModelFileError(
            f"The tf_keras model's outputs differ from the Keras 3 model's (max abs diff "
            f"{diff:.3g} on outputs up to {scale:.3g}, tolerance {atol:g} x max(1, that); "
            f"layer outputs relative {rtol:g})",
            first or "no single layer exceeds the tolerance; the difference accumulates",
            "Report it with the model; meanwhile rebuild that layer in tf_keras or replace it "
            "with built-in layers")
    return diff, worst, scale
