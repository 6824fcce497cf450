"""Keras 3 layer arguments -> tf_keras layer arguments, as plain JSON data.

Used by pipeline/keras/keras3_graph.py; imports no Keras (the live Keras 3 layer and the tf_keras
module are passed in, see docs/architecture.md on keras_env). Per argument: renamed ones are mapped
(_RENAMED), values translated (DTypePolicy dicts -> dtype names, initializer / regularizer /
constraint dicts, activation names), and an argument tf_keras lacks is dropped only when it
holds the Keras 3 default (read from the Keras 3 class signature, so tf_keras behaves the
same); any other value is an error naming the layer, its class and the argument.
"""

from __future__ import annotations

import inspect
import json

from pipeline.core.errors import ModelFileError

# Keyword arguments every tf_keras layer accepts through **kwargs (tf_keras/src/engine/
# base_layer.py Layer.__init__ ``allowed_kwargs`` plus its named parameters).
_TFK_BASE = {"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape",
             "batch_input_shape", "batch_size", "weights", "activity_regularizer", "autocast",
             "implementation"}
# Arguments renamed between the versions: {class: {keras3 name: tf_keras name}}.
_RENAMED = {"InputLayer": {"batch_shape": "batch_input_shape"},
            "LeakyReLU": {"negative_slope": "alpha"}}
# Keys tf_keras' from_config pops unconditionally (tf_keras/src/layers/attention/
# multi_head_attention.py); None lets it build on first call.
_TFK_EXTRA = {"MultiHeadAttention": {"query_shape": None, "key_shape": None,
                                     "value_shape": None}}
# Activation names whose tf_keras function has the same maths (tf_keras/src/activations.py:
# silu/relu6/leaky_relu/log_softmax are aliases of tf.nn with Keras 3's defaults).
_SAME_ACTIVATIONS = {"linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "elu", "selu",
                     "softplus", "softsign", "exponential", "gelu", "mish", "silu", "swish",
                     "leaky_relu", "log_softmax"}
# Keras 3 hard_sigmoid is relu6(x + 3) / 6 (keras/src/backend/tensorflow/nn.py) but tf_keras'
# is clip(0.2 x + 0.5) (tf_keras/src/backend.py), and tf_keras has no hard_silu: both are
# rebuilt from layers exactly as tf_keras.applications.MobileNetV3 builds them.
EXPANDED = {"hard_sigmoid", "hard_silu", "hard_swish"}
# Keras-3-only arguments read from **kwargs (so absent from the signature) and their neutral
# values, e.g. LayerNormalization pops rms_scaling=False (keras/src/layers/normalization/
# layer_normalization.py).
_KWARG_DEFAULTS = {"rms_scaling": False, "lora_rank": None, "lora_alpha": None,
                   "quantization_config": None, "optional": False}
_OBJ_KINDS = (("_initializer", "initializers"), ("_regularizer", "regularizers"),
              ("_constraint", "constraints"))
_MISSING = object()


def layer_error(what, name, cls, fix):
    return ModelFileError(what, f"layer '{name}' ({cls})", fix)


def _json(v):
    """The config form of a Python default (tuples -> lists), for 'is this the default?'."""
    try:
        return json.loads(json.dumps(v))
    except (TypeError, ValueError):
        return _MISSING


def _defaults(cls) -> dict:
    out = {}
    for c in cls.__mro__:
        if "__init__" in vars(c):
            for p in inspect.signature(vars(c)["__init__"]).parameters.values():
                if p.default is not p.empty:
                    out.setdefault(p.name, p.default)
    return out


def _accepts(cls) -> set:
    return set(inspect.signature(cls.__init__).parameters) | _TFK_BASE


def tensor_value(v):
    """Constants Keras 3 stores as {"class_name": "__numpy__"|"__tensor__", ...} -> lists."""
    if isinstance(v, dict) and v.get("class_name") in ("__numpy__", "__tensor__"):
        return v["config"]["value"]
    return v


def dtype_name(v, name, cls):
    """A Keras 3 DTypePolicy dict -> the policy name tf_keras takes ("float32", ...)."""
    if isinstance(v, dict):
        pol = v.get("class_name", "")
        if pol not in ("DTypePolicy", "FloatDTypePolicy"):
            raise layer_error(f"Keras 3 dtype policy {pol} (a quantized layer) has no "
                              "tf_keras equivalent", name, cls, "Export the float model "
                              "(before Keras quantize) and let QAT quantize it")
        return v["config"]["name"]
    return v


class Translator:
    """Per-layer argument translation; collects notes and weight transforms for the model."""

    def __init__(self, tfk, tf_keras_objects=None):
        self.tfk = tfk
        self.user = dict(tf_keras_objects or {})
        self.transforms, self.notes, self.count = {}, [], 0

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)

    def _object(self, key, v, kind, name, cls):
        """An initializer / regularizer / constraint dict, checked against tf_keras' class."""
        if not isinstance(v, dict):
            return v
        c = v.get("class_name")
        target = getattr(getattr(self.tfk, kind), str(c), None)
        if target is None or v.get("registered_name") not in (None, c):
            if kind == "initializers":  # weights are copied: only a re-initialisation differs
                self.note(f"{cls} {key}={c} dropped (no tf_keras initializer; weights copied)")
                return _MISSING
            raise layer_error(f"{key}={c} has no tf_keras equivalent", name, cls,
                              f"Use a built-in {kind[:-1]} (e.g. L2) or none, then re-save")
        cfg, ok = {}, _accepts(target)
        for k, val in (v.get("config") or {}).items():
            if k in ok:
                cfg[k] = val
            elif val is not None:  # e.g. GlorotUniform input_axes=None (Keras 3.1x only)
                raise layer_error(f"{key} {c}({k}={val!r}) cannot be expressed in tf_keras",
                                  name, cls, f"Remove {k} from the {kind[:-1]} and re-save")
        return {"module": f"keras.{kind}", "class_name": c, "config": cfg,
                "registered_name": None}

    def config(self, cls_name, cfg, live, name):
        """Translate one layer's arguments; returns (config, activation to expand or None)."""
        target = self.user.get(cls_name) or getattr(self.tfk.layers, cls_name)
        ok = _accepts(target) if cls_name not in self.user else None
        ren, out, expand = _RENAMED.get(cls_name, {}), dict(_TFK_EXTRA.get(cls_name, {})), None
        k3_defaults = _defaults(type(live)) if live is not None else {}
        for key, v in cfg.items():
            v = tensor_value(v)
            if isinstance(v, dict) and "shared_object_id" in v:
                v = {k: x for k, x in v.items() if k != "shared_object_id"}
            key2 = ren.get(key, key)
            if key == "dtype":
                v = dtype_name(v, name, cls_name)
            elif key in ("activation", "recurrent_activation"):
                v, exp = self._activation(v, name, cls_name)
                if exp and key != "activation":
                    raise layer_error(f"{key}={exp!r} has no tf_keras equivalent here", name,
                                      cls_name, "Use an activation tf_keras has (e.g. sigmoid)")
                expand = expand or exp
            else:
                for suffix, kind in _OBJ_KINDS:  # activity_regularizer included
                    if key.endswith(suffix):
                        v = self._object(key, v, kind, name, cls_name)
                if v is _MISSING:
                    continue
            if ok is None or key2 in ok:
                out[key2] = v
                continue
            default = k3_defaults.get(key, _KWARG_DEFAULTS.get(key, _MISSING))
            d = _json(default) if default is not _MISSING else _MISSING
            if d is not _MISSING and d == _json(v):
                continue  # Keras-3-only argument at its default: tf_keras behaves the same
            if (key, v) == ("data_format", "channels_last"):
                continue  # Keras 3 resolves None to this; tf_keras layers without the
                # argument (Resizing, ...) are channels-last only
            fix = (f"Remove {key}" if default is _MISSING else
                   f"Set {key} to its default ({default!r})")
            raise layer_error(f"argument {key}={v!r} has no tf_keras {cls_name} equivalent",
                              name, cls_name, f"{fix} in Keras 3 and re-save, or rebuild this "
                              "layer in tf_keras")
        return out, expand

    def _activation(self, v, name, cls):
        if v is None or v in _SAME_ACTIVATIONS:
            return v, None
        if v in EXPANDED:
            return "linear", v
        raise layer_error(f"activation {v!r} has no tf_keras equivalent", name, cls,
                          f"Use one of {', '.join(sorted(_SAME_ACTIVATIONS | EXPANDED))} or "
                          "build it from layers")
