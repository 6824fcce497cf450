"""LayerNormalization rewritten into the int8 steps the converter runs, each fake-quantized.

The converter lowers a tf_keras LayerNormalization to about ten int8 ops (MEAN,
SQUARED_DIFFERENCE, MEAN, ADD eps, RSQRT, MUL, ...) whose intermediate tensors it quantizes
from the representative data. QAT with the layer whole fake-quantizes only its output, so
training never sees those roundings; on the digits transformer they flipped 5 of 450
near-tie predictions (98.89 % agreement of int8 with Keras QAT), on char_lm 6 % of tokens.

``graph.rebuild(..., layernorm=True)`` (the QAT path) replaces each LayerNormalization over
the last axis by layers that compute the same function one int8 op at a time, so QAT
simulates every rounding the .tflite makes (each layer's output is fake-quantized by its
own QuantizeConfig in fallbacks._OWN):

    {n}_mean    LNMean       mu = mean(x)                       MEAN
    {n}_center  LNCenter     d = x - mu                         SUB
    {n}_square  LNSquare     d * d                              MUL
    {n}_var     LNMean       var = mean(d * d)                  MEAN
    {n}_eps     LNEpsilon    var + epsilon                      ADD
    {n}_rsqrt   LNRsqrt      r = rsqrt(var + epsilon)           RSQRT
    {n}_norm    LNNormalize  d * r                              MUL
    {n}_gamma   LNGamma      (d * r) * gamma  (if scale)        MUL, gamma int8 per tensor
    {n}_beta    LNBeta       ... + beta       (if center)       ADD, beta int8 per tensor

In float this equals Keras' layer to float32 rounding (tests check it). The float32 and PTQ
variants are made without it: PTQ gets the converter's own lowering of the user's layer.
A LayerNormalization over other axes keeps the whole-layer QuantizeConfig.
"""

from __future__ import annotations

import numpy as np

from pipeline.core import keras_env
from pipeline.keras.attention import AttentionRoute

LN = "LayerNormalization"


# long: nine one-op layer classes sharing one registration
def _define(env) -> dict:
    tf, keras = env.tf, env.keras
    register = keras.utils.register_keras_serializable(package="qat_deploy")

    class _Step(keras.layers.Layer):
        def compute_output_shape(self, input_shape):
            return input_shape[0] if isinstance(input_shape, (list, tuple)) and \
                isinstance(input_shape[0], (list, tuple, tf.TensorShape)) else input_shape

    @register
    class LNMean(_Step):
        """Mean over the last axis, kept: (..., d) -> (..., 1)."""

        def call(self, x):
            return tf.reduce_mean(x, axis=-1, keepdims=True)

        def compute_output_shape(self, input_shape):
            return tf.TensorShape(list(input_shape[:-1]) + [1])

    @register
    class LNCenter(_Step):
        """x - mean: [(..., d), (..., 1)] -> (..., d)."""

        def call(self, inputs):
            return inputs[0] - inputs[1]

    @register
    class LNSquare(_Step):
        def call(self, d):
            return d * d

    @register
    class LNEpsilon(_Step):
        def __init__(self, epsilon=1e-3, **kwargs):
            super().__init__(**kwargs)
            self.epsilon = float(epsilon)

        def call(self, var):
            return var + self.epsilon

        def get_config(self):
            return {**super().get_config(), "epsilon": self.epsilon}

    @register
    class LNRsqrt(_Step):
        def call(self, v):
            return tf.math.rsqrt(v)

    @register
    class LNNormalize(_Step):
        """(x - mean) * rsqrt(var + eps): [(..., d), (..., 1)] -> (..., d)."""

        def call(self, inputs):
            return inputs[0] * inputs[1]

    @register
    class LNGamma(_Step):
        def build(self, input_shape):
            self.gamma = self.add_weight("gamma", shape=(int(input_shape[-1]),),
                                         initializer="ones")
            super().build(input_shape)

        def call(self, x):
            return x * self.gamma

    @register
    class LNBeta(_Step):
        def build(self, input_shape):
            self.beta = self.add_weight("beta", shape=(int(input_shape[-1]),),
                                        initializer="zeros")
            super().build(input_shape)

        def call(self, x):
            return x + self.beta

    return {c.__name__: c for c in (LNMean, LNCenter, LNSquare, LNEpsilon, LNRsqrt,
                                    LNNormalize, LNGamma, LNBeta)}


# The LayerNorm step layers (registered as ``qat_deploy>Name`` so QAT models reload).
layer_classes = keras_env.once(_define)


def is_rewritable(keras, layer) -> bool:
    return type(layer) is keras.layers.LayerNormalization


def over_last_axis(layer, x) -> bool:
    """Whether ``layer`` normalizes tensor ``x`` over its last axis only."""
    ndim = x.shape.rank
    axes = [int(a) for a in np.atleast_1d(layer.axis)]
    return ndim is not None and sorted({a % ndim for a in axes}) == [ndim - 1]


def rewrite(keras, layer, x, unique) -> tuple[object, AttentionRoute] | None:
    """Replace one LayerNormalization call on tensor ``x``; returns (output, route), or
    None when it normalizes over other axes (it is then kept whole). ``unique(base)`` gives
    an unused layer name."""
    if not over_last_axis(layer, x):
        return None
    cls = layer_classes()
    n = layer.name
    made: list = []

    def add(new_layer, *inputs):
        made.append(new_layer)
        return new_layer(*inputs)

    mu = add(cls["LNMean"](name=unique(f"{n}_mean")), x)
    d = add(cls["LNCenter"](name=unique(f"{n}_center")), [x, mu])
    sq = add(cls["LNSquare"](name=unique(f"{n}_square")), d)
    var = add(cls["LNMean"](name=unique(f"{n}_var")), sq)
    v = add(cls["LNEpsilon"](epsilon=layer.epsilon, name=unique(f"{n}_eps")), var)
    r = add(cls["LNRsqrt"](name=unique(f"{n}_rsqrt")), v)
    out = add(cls["LNNormalize"](name=unique(f"{n}_norm")), [d, r])
    if layer.scale:
        out = add(cls["LNGamma"](name=unique(f"{n}_gamma")), out)
        made[-1].set_weights([layer.gamma.numpy()])
    if layer.center:
        out = add(cls["LNBeta"](name=unique(f"{n}_beta")), out)
        made[-1].set_weights([layer.beta.numpy()])
    detail = (f"rewritten into {len(made)} one-op layers, each output fake-quantized as the "
              "converter's int8 MEAN / SUB / MUL / MEAN / ADD / RSQRT / MUL"
              + (" / MUL gamma" if layer.scale else "") + (" / ADD beta" if layer.center
                                                            else ""))
    return out, AttentionRoute(n, LN, int(layer.count_params()), tuple(m.name for m in made),
                               detail)
