"""Keras 3 model graph -> tf_keras (Keras 2) model config, as plain JSON data.

Used by pipeline/keras/keras3.py; imports no Keras (the live Keras 3 model and the tf_keras module
are passed in, see docs/architecture.md on keras_env); per-layer arguments are keras3_config's job. The
two graph formats, read from the installed sources:

* Keras 3 (keras/src/models/functional.py ``get_config``, keras/src/ops/node.py): each entry of
  ``config["layers"]`` has ``module``/``registered_name`` and ``inbound_nodes`` as
  ``{"args": [...], "kwargs": {...}}`` where tensors are ``{"class_name": "__keras_tensor__",
  "config": {"keras_history": [layer, node, tensor], ...}}``; dtypes are ``DTypePolicy`` dicts;
  InputLayer has ``batch_shape``; ``keras.ops`` calls on symbolic tensors (``x + 3.0``) are
  stored as operations (module ``keras.src.ops.*``), not layers; node indices of a nested model
  start at 0.
* tf_keras (tf_keras/src/engine/node.py ``serialize``, functional.py ``process_node``): a node
  is a nest of ``[layer, node, tensor, call_kwargs]``; InputLayer has ``batch_input_shape``;
  ``x + 3.0`` is a ``TFOpLambda`` layer (tf_op_layer.py) with the constant in the kwargs; node
  0 of a nested Functional/Sequential is its own internal node and is skipped
  (``_should_skip_first_node``), so references to its outputs are shifted by one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from pipeline.core.errors import ModelFileError
from pipeline.keras.keras3_config import (EXPANDED, Translator, dtype_name, layer_error,
                                    tensor_value)

# keras.ops on symbolic tensors: binary ops -> (tf function for TFOpLambda, merge layer).
_BINARY_OPS = {"Add": ("__operators__.add", "Add"), "Subtract": ("math.subtract", "Subtract"),
               "Multiply": ("math.multiply", "Multiply"), "Divide": ("math.truediv", None),
               "TrueDivide": ("math.truediv", None)}
_COMMUTATIVE = {"Add", "Multiply"}
_UNARY_OPS = {"Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid", "Tanh": "tanh",
              "Silu": "silu", "HardSigmoid": "hard_sigmoid", "HardSilu": "hard_silu"}


@dataclass
class ConfigResult:
    config: dict                                  # {"class_name", "config"} for tf_keras
    aliases: dict = field(default_factory=dict)   # Keras 3 layer -> tf_keras layer, same output
    transforms: dict = field(default_factory=dict)  # "model/layer" -> weight transform
    notes: list = field(default_factory=list)
    count: int = 0                                # Keras 3 layers/ops translated


def _is_kt(v):
    return isinstance(v, dict) and v.get("class_name") == "__keras_tensor__"


def translate_model(t: Translator, live, k3cfg, top=False) -> ConfigResult:
    """One Keras 3 Sequential/Functional (serialized) -> a tf_keras Sequential/Functional."""
    kind = model_kind(live)
    if kind == "sequential":
        k3cfg = _sequential_as_functional(k3cfg, live)
    cfg = k3cfg["config"]
    g = _Graph(t, live, cfg)
    for entry in cfg["layers"]:
        g.add(entry)
    out = {"name": cfg["name"], "trainable": cfg.get("trainable", True),
           "layers": g.entries, "input_layers": g.io(cfg["input_layers"]),
           "output_layers": g.io(cfg["output_layers"])}
    if kind == "sequential" and not g.expanded:
        layers = [dict(e) for e in g.entries]
        for e in layers:
            e.pop("inbound_nodes", None)
        res = {"class_name": "Sequential", "config": {"name": cfg["name"], "layers": layers}}
    else:
        if kind == "sequential":
            t.note(f"Sequential '{cfg['name']}' rebuilt as a Functional model (a layer was "
                   "expanded into several)")
        res = {"class_name": "Functional", "config": out}
    return ConfigResult(res, g.aliases if top else {})


class _Graph:
    """Builds the tf_keras ``layers`` list of one Functional model."""

    def __init__(self, t: Translator, live, cfg):
        self.t, self.entries, self.aliases, self.expanded = t, [], {}, False
        self.ops = {op.name: op for op in getattr(live, "operations", live.layers)}
        self.nested = set()          # names of nested models: tf_keras node index + 1
        self.redirect = {}           # (name, node) -> [name, node, tensor]
        self.names = {e["name"] for e in cfg["layers"]}
        self.path = cfg["name"]
        self.mask_ops = set()        # keras.ops.not_equal(ids, 0): Embedding padding masks

    def _fresh(self, base):
        n, i = base, 1
        while n in self.names:
            n, i = f"{base}_{i}", i + 1
        self.names.add(n)
        return n

    def ref(self, kt):
        name, node, tensor = kt["config"]["keras_history"]
        if name in self.mask_ops:
            raise layer_error("an Embedding padding mask (keras.ops.not_equal(ids, 0)) used as "
                              "a tensor, not as a mask argument", name, "NotEqual",
                              "Pass it only as a layer's mask, or build the mask with layers")
        if (name, node) in self.redirect:
            return list(self.redirect[(name, node)])
        return [name, node + (1 if name in self.nested else 0), tensor]

    def io(self, refs):
        refs = [refs] if refs and isinstance(refs[0], str) else refs
        return [self.ref({"config": {"keras_history": r}}) for r in refs]

    def _emit(self, cls, cfg, name, nodes):
        self.entries.append({"class_name": cls, "config": {**cfg, "name": name}, "name": name,
                             "inbound_nodes": nodes})

    def _node(self, node, name, cls):
        """Keras 3 {"args", "kwargs"} -> (first-arg nest of refs, call kwargs). tf_keras keeps
        only the first argument positional; the others become kwargs named after its call
        signature, tensors as [layer, node, tensor] (tf_keras/src/engine/node.py)."""
        args, kwargs = node.get("args", []), node.get("kwargs", {})
        kwargs = {k: v for k, v in kwargs.items() if v is not None and not (
            (k == "mask" or k.endswith("_mask")) and _is_kt(v)
            and v["config"]["keras_history"][0] in self.mask_ops)}
        if len(args) > 1:
            target = self.t.user.get(cls) or getattr(self.t.tfk.layers, cls, None)
            names = list(inspect.signature(target.call).parameters)[2:] if target else []
            if len(names) < len(args) - 1:
                raise layer_error(f"{len(args)} positional call arguments have no tf_keras "
                                  "node form", name, cls, "Pass them by keyword")
            kwargs = {**dict(zip(names, args[1:])), **kwargs}
        kwargs = {k: self.ref(v) if _is_kt(v) else tensor_value(v) for k, v in kwargs.items()}
        if not args or any(isinstance(v, dict) for v in kwargs.values()):
            raise layer_error("the call's arguments have no tf_keras node form", name, cls,
                              "Call the layer on tensors, with plain keyword arguments")
        first = args[0]
        if _is_kt(first):
            return self.ref(first), kwargs
        if isinstance(first, list) and all(_is_kt(v) for v in first):
            return [self.ref(v) for v in first], kwargs
        raise layer_error("the layer is called on a constant, not a tensor", name, cls,
                          "Feed it a model input or a layer output")

    def add(self, e):
        t, name, cls = self.t, e["name"], e["class_name"]
        live = self.ops.get(name)
        module = str(e.get("module") or "")
        if live is not None and model_kind(live, strict=False):
            sub = translate_model(t, live, e)
            self.nested.add(name)
            self.entries.append({**sub.config, "name": name,
                                 "inbound_nodes": [self._nodes(n, name, cls)
                                                   for n in e["inbound_nodes"]]})
            return
        t.count += cls != "InputLayer"  # layers and ops, not nested model containers
        if module.startswith("keras.src.ops."):
            return self._op(e, name, cls)
        if cls == "LayerScale" and module == "keras.src.applications.convnext":
            return self._layer_scale(e, name)
        if cls == "StochasticDepth" and module == "keras.src.applications.convnext":
            t.note(f"StochasticDepth '{name}' -> identity (drop path is inactive at "
                   "inference; QAT fine-tuning runs without it)")
            return self._emit("Activation", {"activation": "linear"}, name,
                              [self._nodes(n, name, cls) for n in e["inbound_nodes"]])
        if cls == "CustomScaleLayer" and module == "keras.src.applications.inception_resnet_v2":
            return self._custom_scale(e, name)
        self._plain(e, name, cls, module, live)

    def _nodes(self, n, name, cls):
        first, kwargs = self._node(n, name, cls)
        if first and isinstance(first[0], str):
            return [first + [kwargs]]
        return [r + [kwargs] for r in first]

    def _plain(self, e, name, cls, module, live):
        t = self.t
        builtin = module in ("keras.layers", "keras") or module.startswith("keras.src.layers")
        if cls == "Lambda" or (cls not in t.user and not (
                builtin and getattr(t.tfk.layers, cls, None) is not None)):
            what = ("Lambda layers hold Python code and cannot be translated" if cls == "Lambda"
                    else f"class {cls} ({module or 'custom'}) has no tf_keras equivalent")
            raise layer_error(what, name, cls, "Replace it with built-in Keras layers, or "
                              f"pass tf_keras_objects={{'{cls}': <a tf_keras layer class "
                              "taking the same config>}")
        cfg = dict(e["config"])
        if cls == "InputLayer":
            cfg.pop("batch_size", None)
        cfg, expand = t.config(cls, cfg, live, name)
        nodes = [self._nodes(n, name, cls) for n in e.get("inbound_nodes", [])]
        if cls == "Activation" and expand:
            # The whole layer becomes the expansion; its last layer keeps the name.
            for i, node in enumerate(nodes):
                self._expand(expand, node[0][:3], name if i == 0 else self._fresh(name), i,
                             cfg.get("dtype"), name)
            return
        self._emit(cls, cfg, name, nodes)
        if cls in t.user:
            t.note(f"'{name}' ({cls}) translated with the tf_keras class you passed")
        for i in range(len(nodes) if expand else 0):
            self._expand(expand, [name, i, 0], self._fresh(f"{name}_{expand}"), i,
                         cfg.get("dtype"), name)

    def _expand(self, act, src, final, node_i, dtype, owner):
        """hard_sigmoid(x) = relu6(x + 3) * (1/6); hard_silu(x) = x * hard_sigmoid(x)."""
        self.expanded = True
        dt = {"dtype": dtype} if dtype else {}
        last = act == "hard_sigmoid"
        a = self._fresh(f"{final}_hs_add")
        self._emit("TFOpLambda", {"function": "__operators__.add", **dt}, a,
                   [src + [{"y": 3.0, "name": None}]])
        r = self._fresh(f"{final}_hs_relu6")
        self._emit("ReLU", {"max_value": 6.0, **dt}, r, [[[a, 0, 0, {}]]])
        m = final if last else self._fresh(f"{final}_hs_mul")
        self._emit("TFOpLambda", {"function": "math.multiply", **dt}, m,
                   [[r, 0, 0, {"y": 1.0 / 6.0, "name": None}]])
        if not last:
            self._emit("Multiply", dt, final, [[src + [{}], [m, 0, 0, {}]]])
        if final != owner or node_i:
            self.redirect[(owner, node_i)] = [final, 0, 0]
            if node_i == 0:
                self.aliases[owner] = final
        self.t.note(f"{act} rebuilt from ReLU(6), add, multiply layers (as in tf_keras "
                    "MobileNetV3)")

    def _op(self, e, name, cls):
        """A keras.ops call stored in the graph -> tf_keras layer(s) computing the same."""
        if len(e["inbound_nodes"]) != 1:
            raise layer_error("a shared keras.ops operation", name, cls,
                              "Call the op once per use")
        node = e["inbound_nodes"][0]
        args = [tensor_value(a) for a in node.get("args", [])]
        kw = {k: v for k, v in node.get("kwargs", {}).items() if v is not None}
        cfg = {k: v for k, v in e["config"].items() if k != "name"}
        if cls == "NotEqual" and len(args) == 2 and _is_kt(args[0]) and args[1] == 0:
            # Keras 3 stores the padding mask of Embedding(mask_zero=True) as this op and passes
            # it as mask= to the layers after it; tf_keras propagates the same mask implicitly
            # (Embedding.compute_mask), so the op and those arguments are dropped (the output
            # check compares the two models with padding ids in the inputs).
            self.mask_ops.add(name)
            return self.t.note(f"'{name}' (keras.ops.not_equal(ids, 0), a padding mask): "
                               "tf_keras propagates Embedding(mask_zero=True) masks itself")
        if cls in _BINARY_OPS and len(args) == 2 and not kw:
            fn, merge = _BINARY_OPS[cls]
            a, b = args
            if not _is_kt(a) and _is_kt(b) and cls in _COMMUTATIVE:
                a, b = b, a
            if _is_kt(a) and _is_kt(b) and merge and (
                    a["config"]["shape"] == b["config"]["shape"]):
                return self._emit(merge, {}, name, [[self.ref(a) + [{}], self.ref(b) + [{}]]])
            if _is_kt(a) and not _is_kt(b):
                return self._emit("TFOpLambda", {"function": fn}, name,
                                  [self.ref(a) + [{"y": b, "name": None}]])
            if _is_kt(a) and _is_kt(b):
                return self._emit("TFOpLambda", {"function": fn}, name,
                                  [self.ref(a) + [{"y": self.ref(b), "name": None}]])
            if cls == "Subtract" and _is_kt(b):  # c - x == (-x) + c exactly (negation is exact)
                n = self._fresh(f"{name}_neg")
                self._emit("TFOpLambda", {"function": "math.negative"}, n,
                           [self.ref(b) + [{"name": None}]])
                return self._emit("TFOpLambda", {"function": "__operators__.add"}, name,
                                  [[n, 0, 0, {"y": a, "name": None}]])
        elif cls in _UNARY_OPS and len(args) == 1 and _is_kt(args[0]) and not kw and not cfg:
            act = _UNARY_OPS[cls]
            if act in EXPANDED:
                return self._expand(act, self.ref(args[0]), name, 0, None, name)
            return self._emit("Activation", {"activation": act}, name,
                              [[self.ref(args[0]) + [{}]]])
        elif cls == "Gelu" and len(args) == 1 and _is_kt(args[0]) and not kw:
            # keras.ops.gelu defaults to approximate=True, Activation("gelu") to False
            return self._emit("TFOpLambda", {"function": "nn.gelu"}, name, [self.ref(args[0]) + [
                {"approximate": bool(cfg.get("approximate", True)), "name": None}]])
        elif cls == "Softmax" and len(args) == 1 and _is_kt(args[0]) and not kw:
            return self._emit("Softmax", {"axis": cfg.get("axis", -1)}, name,
                              [[self.ref(args[0]) + [{}]]])
        raise layer_error(f"keras.ops.{cls.lower()} with these arguments has no tf_keras "
                          f"layer equivalent (module {e.get('module')})", name, cls,
                          "Use a Keras layer for it (e.g. layers.Add, layers.Reshape) and "
                          "re-save")

    def _layer_scale(self, e, name):
        """ConvNeXt LayerScale(x) = x * gamma per channel == a 1x1 DepthwiseConv2D without bias
        whose kernel is gamma (one multiply per element, so bit-identical); tf_keras' own
        LayerScale is an unregistered custom class, this stays plain Keras."""
        (node,) = e["inbound_nodes"]
        src = node["args"][0]
        rank = len(src["config"]["shape"] or self.ops[name].input.shape)
        if rank != 4:
            raise layer_error(f"LayerScale on a rank-{rank} tensor (only NHWC is rebuilt)",
                              name, "LayerScale", "Use it on 4-D feature maps")
        self.t.transforms[f"{self.path}/{name}"] = "layer_scale_to_depthwise"
        self.t.note("ConvNeXt LayerScale rebuilt as a 1x1 DepthwiseConv2D (kernel = gamma)")
        dt = dtype_name(e["config"].get("dtype"), name, "LayerScale")
        self._emit("DepthwiseConv2D", {"kernel_size": [1, 1], "use_bias": False,
                                       "depth_multiplier": 1, "dtype": dt,
                                       "trainable": e["config"].get("trainable", True)},
                   name, [[self.ref(src) + [{}]]])

    def _custom_scale(self, e, name):
        """InceptionResNetV2 CustomScaleLayer: inputs[0] + inputs[1] * scale (same op order)."""
        (node,) = e["inbound_nodes"]
        a, b = node["args"][0]
        m = self._fresh(f"{name}_mul")
        self._emit("TFOpLambda", {"function": "math.multiply"}, m,
                   [self.ref(b) + [{"y": e["config"]["scale"], "name": None}]])
        self._emit("Add", {}, name, [[self.ref(a) + [{}], [m, 0, 0, {}]]])
        self.expanded = True


def model_kind(live, strict=True):
    """'sequential' | 'functional' for a Keras 3 model; a subclassed one raises (or None)."""
    names = {(c.__module__, c.__name__) for c in type(live).__mro__}
    if ("keras.src.models.sequential", "Sequential") in names:
        return "sequential"
    if ("keras.src.models.functional", "Functional") in names:
        return "functional"
    if strict:
        raise ModelFileError(
            "Subclassed Keras 3 models cannot be translated (tf_keras and tfmot need a "
            "Sequential or Functional model)", f"{type(live).__name__} "
            f"({type(live).__module__})", "Rebuild it with keras.Input and layer calls "
            "(Functional API) or keras.Sequential, copy the weights with set_weights and "
            "save that model as .keras")
    return None


def _sequential_as_functional(k3cfg, live):
    """A Keras 3 Sequential config as a Functional one (a chain), so one path handles both."""
    layers = [dict(e) for e in k3cfg["config"]["layers"]]
    if not layers or layers[0]["class_name"] != "InputLayer":
        raise ModelFileError("The Keras 3 Sequential model has no input shape (not built)",
                             k3cfg["config"].get("name"),
                             "Start it with keras.Input(shape) or call model.build(shape)")
    for e in layers:
        e["name"] = e["config"]["name"]
    for prev, e in zip(layers, layers[1:]):
        e["inbound_nodes"] = [{"args": [{"class_name": "__keras_tensor__", "config": {
            "shape": None, "keras_history": [prev["name"], 0, 0]}}], "kwargs": {}}]
    layers[0]["inbound_nodes"] = []
    cfg = {"name": k3cfg["config"]["name"], "trainable": k3cfg["config"].get("trainable", True),
           "layers": layers, "input_layers": [[layers[0]["name"], 0, 0]],
           "output_layers": [[layers[-1]["name"], 0, 0]]}
    return {"class_name": "Sequential", "config": cfg}


def translate(model3, keras3, tfk, tf_keras_objects=None) -> ConfigResult:
    """The whole translation: the tf_keras config plus what keras3.py needs to finish."""
    t = Translator(tfk, tf_keras_objects)
    res = translate_model(t, model3, keras3.saving.serialize_keras_object(model3), top=True)
    res.transforms, res.notes, res.count = t.transforms, t.notes, t.count
    return res
