"""Dense on sequences rewritten so the converter makes one int8 FULLY_CONNECTED with its bias.

tf_keras' Dense on a (batch, time, features) input computes ``tensordot`` (reshape, matmul,
reshape) and then adds the bias. The converter lowers that to FULLY_CONNECTED without bias,
RESHAPE, and a separate ADD whose bias operand is quantized to **int8** (not int32 at the
accumulator's scale) and whose input, the matmul's output, gets an int8 range QAT never
simulated: on the digits transformer every such layer's local error was 0.25 LSB mean (a
quarter of its outputs one step off), enough to flip near-tie predictions.

``SequenceDense`` computes the same function as ``tf.matmul(x, kernel) + bias`` on the last
axis (a broadcast BatchMatMul with a constant right-hand side): the converter turns it into
one FULLY_CONNECTED (``keep_num_dims``) with an int32 bias, exactly what QAT simulates with
the kernel and the output fake-quantized. ReLU / ReLU6 stay fused into it (as TFLite fuses
them); any other activation becomes a separate ``Activation`` layer, so the int8 tensor
feeding it (the FULLY_CONNECTED's output) is fake-quantized too.

``graph.rebuild`` replaces every Dense whose input has rank >= 3 (the replacement keeps the
layer's name); the MultiHeadAttention rewrite uses it for its projections.
"""

from __future__ import annotations

from pipeline.core import keras_env

_FUSED = {"linear", "relu", "relu6"}  # activations TFLite fuses into FULLY_CONNECTED


def _define(env) -> dict:
    tf, keras = env.tf, env.keras

    @keras.utils.register_keras_serializable(package="qat_deploy")
    class SequenceDense(keras.layers.Layer):
        """Dense over the last axis of a rank >= 3 input as ``matmul(x, kernel) + bias``."""

        def __init__(self, units, use_bias=True, activation=None, **kwargs):  # noqa: D107
            super().__init__(**kwargs)
            self.units = int(units)
            self.use_bias = bool(use_bias)
            self.activation = keras.activations.get(activation)

        def build(self, input_shape):
            self.kernel = self.add_weight("kernel", shape=(int(input_shape[-1]), self.units),
                                          initializer="glorot_uniform")
            self.bias = self.add_weight("bias", shape=(self.units,), initializer="zeros") \
                if self.use_bias else None
            super().build(input_shape)

        def call(self, x):
            y = tf.matmul(x, self.kernel)
            if self.bias is not None:
                y = y + self.bias
            return self.activation(y)

        def compute_output_shape(self, input_shape):
            return tf.TensorShape(list(input_shape[:-1]) + [self.units])

        def get_config(self):
            return {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
                    "activation": keras.activations.serialize(self.activation)}

    return {"SequenceDense": SequenceDense}


layer_classes = keras_env.once(_define)  # {"SequenceDense": the class}, registered once


def activation_name(fn) -> str:
    return getattr(fn, "__name__", "linear") if fn is not None else "linear"


def is_rewritable(keras, layer) -> bool:
    return type(layer) is keras.layers.Dense


def dense(keras, units: int, use_bias: bool, activation, name: str, weights: list, unique):
    """The layers computing a Dense on sequences: [SequenceDense named ``name`` holding
    ``weights``] plus, for an activation TFLite does not fuse, an Activation layer."""
    cls = layer_classes()["SequenceDense"]
    fused = activation_name(activation) in _FUSED
    layer = cls(units, use_bias=use_bias, activation=activation if fused else "linear",
                name=name)
    layers = [layer]
    if not fused:
        layers.append(keras.layers.Activation(activation, name=unique(f"{name}_act")))
    return layers, weights


def call(layers: list, weights: list | None, x):
    """Apply ``layers`` in turn (setting the SequenceDense's weights once it is built)."""
    out = x
    for i, layer in enumerate(layers):
        out = layer(out)
        if i == 0 and weights is not None:
            layer.set_weights(weights)
    return out


def rewrite(keras, layer, x, unique, cache: dict):
    """Replace one Dense call on ``x`` when ``x`` has rank >= 3: (output, new layers) or
    None (kept). ``cache`` maps a Dense called several times to its replacement."""
    if x.shape.rank is None or x.shape.rank < 3:
        return None
    if id(layer) in cache:
        return call(cache[id(layer)], None, x), []
    layers, weights = dense(keras, layer.units, layer.use_bias, layer.activation, layer.name,
                            layer.get_weights(), unique)
    cache[id(layer)] = layers
    return call(layers, weights, x), layers
