"""Graph surgery on Functional/Sequential tf_keras models before QAT annotation.

- ``flatten``: nested models (a Model used as a layer) are inlined, so every layer is visible
  to annotation (tfmot refuses nested models: "Quantizing a tf.keras Model inside another
  tf.keras Model is not supported").
- TFOpLambda arithmetic with a constant (``x + 3``, ``x * (1/6)``, ``x / 6`` as tf_keras'
  MobileNetV3 hard-swish/hard-sigmoid write it) becomes a ``Rescaling`` layer, and
  ``tf.nn.relu6`` a ``ReLU(6)``: tfmot cannot wrap a TFOpLambda (its QuantizeAnnotate clone
  calls the op with a list and fails), while Rescaling/ReLU are ordinary serializable layers
  it can annotate. Tensor-tensor ``+``/``*`` become ``Add``/``Multiply``.
- ``MultiHeadAttention`` becomes Dense projections, head reshapes, fake-quantizable matmuls,
  a bounded mask and the Keras Softmax (keras/attention.py), with the layer's own weights.
- ``Dense`` on a rank >= 3 input becomes ``SequenceDense`` of the same name (keras/seqdense.py):
  one int8 FULLY_CONNECTED with an int32 bias instead of FULLY_CONNECTED + an int8 bias ADD.
- With ``layernorm=True`` (the QAT path), ``LayerNormalization`` over the last axis becomes
  one layer per int8 op the converter runs for it (keras/layernorm.py), so QAT simulates
  each of their roundings.

Layers are reused, not copied, so weights are shared with the source model; the rebuilt model
computes exactly the same function (tests check outputs are identical; a rewritten attention
equals the original to float32 rounding, its projections being new layers holding copies of
the weights, the query's scale folded in).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.core import keras_env
from pipeline.keras import attention, layernorm, seqdense

# TFOpLambda symbols rewritten to layers: symbol -> kind
_CONST_OPS = {"__operators__.add": "add", "math.add": "add", "math.multiply": "mul",
              "math.truediv": "div", "math.divide": "div", "math.subtract": "sub",
              "__operators__.sub": "sub"}
_UNARY = {"nn.relu6": ("relu", 6.0), "nn.relu": ("relu", None)}


@dataclass
class Rewritten:
    model: object
    flattened: list[str] = field(default_factory=list)   # nested models inlined
    replaced: dict[str, str] = field(default_factory=dict)  # old layer name -> new layer
    attention: list = field(default_factory=list)  # attention.AttentionRoute per rewritten MHA
    layernorm: list = field(default_factory=list)  # the same per rewritten LayerNormalization
    layernorm_on: bool = False  # rebuild(layernorm=True): LayerNormalization is rewritten
    dense_cache: dict = field(default_factory=dict)  # id(Dense) -> its SequenceDense layers
    sequence_dense: list = field(default_factory=list)  # Dense layers made SequenceDense

    @property
    def changed(self) -> bool:
        return bool(self.flattened or self.replaced or self.attention or self.layernorm or
                    self.sequence_dense)

    @property
    def routes(self) -> list:
        return self.attention + self.layernorm


def _is_tensor(keras, x) -> bool:
    return isinstance(x, keras.KerasTensor) if hasattr(keras, "KerasTensor") else \
        hasattr(x, "_keras_history")


def _scalar(v):
    """A Python/NumPy scalar constant, or None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, np.ndarray) and v.size == 1:
        return float(v.reshape(()))
    if isinstance(v, np.generic):
        return float(v)
    return None


def _replacement(keras, layer, args, kwargs, name: str):
    """A Keras layer computing the same as this TFOpLambda call, or None to keep it."""
    symbol = getattr(layer, "symbol", None) or ""
    kwargs = {k: v for k, v in kwargs.items() if k != "name"}
    operands = list(args) + [kwargs.pop(k) for k in ("y", "x") if k in kwargs]
    if kwargs:
        return None
    if symbol in _UNARY and len(operands) == 1:
        kind, cap = _UNARY[symbol]
        return keras.layers.ReLU(max_value=cap, name=name), [operands[0]]
    if symbol not in _CONST_OPS or len(operands) != 2:
        return None
    a, b = operands
    op = _CONST_OPS[symbol]
    ta, tb = _is_tensor(keras, a), _is_tensor(keras, b)
    if ta and tb:
        if op == "add":
            return keras.layers.Add(name=name), [[a, b]]
        if op == "mul":
            return keras.layers.Multiply(name=name), [[a, b]]
        if op == "sub":
            return keras.layers.Subtract(name=name), [[a, b]]
        return None
    tensor, const = (a, _scalar(b)) if ta else (b, _scalar(a))
    if const is None:
        return None
    if op == "add":
        return keras.layers.Rescaling(1.0, offset=const, name=name), [tensor]
    if op == "mul":
        return keras.layers.Rescaling(const, name=name), [tensor]
    if op == "div" and ta and const != 0:
        return keras.layers.Rescaling(1.0 / const, name=name), [tensor]
    if op == "sub":
        return (keras.layers.Rescaling(1.0, offset=-const, name=name), [tensor]) if ta else \
            (keras.layers.Rescaling(-1.0, offset=const, name=name), [tensor])
    return None


def rebuild(model, layernorm: bool = False) -> Rewritten:
    """Flatten nested models, rewrite TFOpLambda arithmetic and MultiHeadAttention (and with
    ``layernorm``, LayerNormalization); returns the new model."""
    env = keras_env.load()
    keras, tf = env.keras, env.tf
    result = Rewritten(model)
    if not getattr(model, "_is_graph_network", False):
        return result  # Sequential models cannot nest Functional graphs in a way we rewrite
    if not any(_needs_work(keras, l, layernorm) for l in all_layers(model)):
        return result

    new_inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype,
                              name=l.name) for t, l in zip(model.inputs, model._input_layers)]
    mapping = {id(t): n for t, n in zip(model.inputs, new_inputs)}
    used_names = {l.name for l in all_layers(model)}
    result.layernorm_on = layernorm
    outputs = _replay(keras, tf, model, mapping, result, used_names, top=True)
    result.model = keras.Model(new_inputs, outputs, name=model.name)
    return result


def all_layers(model):
    """Every layer of ``model``, the layers of nested functional models included."""
    for l in model.layers:
        yield l
        if hasattr(l, "layers") and getattr(l, "_is_graph_network", False):
            yield from all_layers(l)


def _needs_work(keras, layer, ln: bool = False) -> bool:
    if getattr(layer, "_is_graph_network", False) or type(layer).__name__ == "Sequential":
        return True
    return type(layer).__name__ == "TFOpLambda" or attention.is_rewritable(keras, layer) or \
        (ln and layernorm.is_rewritable(keras, layer)) or (
            seqdense.is_rewritable(keras, layer) and _dense_on_sequences(layer))


def _dense_on_sequences(layer) -> bool:
    return any(getattr(t.shape, "rank", None) is not None and t.shape.rank >= 3
               for node in getattr(layer, "_inbound_nodes", []) or []
               for t in getattr(node, "keras_inputs", []))


def _replay(keras, tf, model, mapping: dict, result: Rewritten, used: set, top: bool):
    """Re-run ``model``'s graph on the tensors in ``mapping``; returns its mapped outputs."""
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.outbound_layer
            if type(layer).__name__ == "InputLayer":
                continue
            sub = lambda x: mapping[id(x)] if _is_tensor(keras, x) else x
            args = tf.nest.map_structure(sub, node.call_args)
            kwargs = tf.nest.map_structure(sub, node.call_kwargs)
            if getattr(layer, "_is_graph_network", False) or \
                    type(layer).__name__ == "Sequential":
                inner_in = tf.nest.flatten(args)
                inner_in = [x for x in inner_in if _is_tensor(keras, x)]
                inner_map = dict(zip((id(t) for t in layer.inputs), inner_in))
                if type(layer).__name__ == "Sequential" and not getattr(
                        layer, "_is_graph_network", False):
                    out = layer(*args, **kwargs)  # a subclassed-like Sequential: keep whole
                else:
                    out = _replay(keras, tf, layer, inner_map, result, used, top=False)
                    result.flattened.append(layer.name)
            elif attention.is_rewritable(keras, layer):
                originals = [t for t in tf.nest.flatten([node.call_args, node.call_kwargs])
                             if _is_tensor(keras, t)]
                out, route = attention.rewrite(keras, layer, args, kwargs, originals,
                                               lambda base: _unique(base, used))
                result.attention.append(route)
            elif result.layernorm_on and layernorm.is_rewritable(keras, layer) and \
                    (done := _layernorm(keras, layer, args, kwargs, used)) is not None:
                out, route = done
                result.layernorm.append(route)
            elif seqdense.is_rewritable(keras, layer) and len(args) == 1 and \
                    (done := seqdense.rewrite(keras, layer, args[0],
                                              lambda base: _unique(base, used),
                                              result.dense_cache)) is not None:
                out, made = done
                if made:
                    result.sequence_dense.append(layer.name)
            elif type(layer).__name__ == "TFOpLambda":
                name = _unique(f"{layer.name.replace('.', '_')}", used)
                rep = _replacement(keras, layer, args, kwargs, name)
                if rep is None:
                    out = layer(*args, **kwargs)
                else:
                    new_layer, new_args = rep
                    out = new_layer(*new_args)
                    result.replaced[layer.name] = f"{type(new_layer).__name__}({new_layer.name})"
            else:
                out = layer(*args, **kwargs)
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
                mapping[id(old)] = new
    outs = [mapping[id(t)] for t in model.outputs]
    return outs if len(outs) > 1 else outs[0]


def _layernorm(keras, layer, args, kwargs, used: set):
    """(output, route) of a LayerNormalization rewritten on its one input, or None."""
    extra = {k: v for k, v in kwargs.items() if k not in ("training",)}
    if len(args) != 1 or extra:
        return None
    return layernorm.rewrite(keras, layer, args[0], lambda base: _unique(base, used))


def _unique(base: str, used: set) -> str:
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name
