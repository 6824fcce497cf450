"""MultiHeadAttention rewritten into layers QAT can fake-quantize, computing the same function.

tfmot cannot wrap tf_keras' ``MultiHeadAttention`` (its ``compute_output_shape`` takes the
query and value shapes separately, and its inner EinsumDense layers and einsums are invisible
to the registry), so ``graph.rebuild`` replaces each one by primitives:

    query/key/value  SequenceDense (keras/seqdense.py) with the MHA's own kernels reshaped to
                     (d, heads*dim); the query's 1/sqrt(key_dim) scale is folded into its
                     kernel and bias
    *_heads / *_perm Reshape (T, heads, dim) and Permute to (heads, T, dim)
    scores           AttentionScores: Q·Kᵀ per head, output fake-quantized (int8 BATCH_MATMUL)
    mask             AttentionMask: attention_mask and/or the causal mask (below)
    softmax          the Keras Softmax (int8 SOFTMAX, output scale 1/256)
    context          AttentionContext: weights·V per head, output fake-quantized
    out_perm/merge   Permute back and Reshape to (T, heads*value_dim)
    output           SequenceDense with the output projection's kernel reshaped to
                     (heads*value_dim, d)

Masks. Keras adds -1e9 to masked scores. In int8 that value would set the scale of the
tensor feeding the softmax (1e9/255 per step), every real score would round to one code and
attention would become uniform. ``AttentionMask`` instead puts a masked score at
``rowmin - headroom``: ``keep * s + (1 - keep) * (min_j s_ij - headroom)``. The tensor's range
is then the scores' own range plus ``headroom``, and a masked position's softmax weight is at
most ``exp(-headroom)`` times that of the row's largest kept score (which is >= its rowmin).
With ``HEADROOM = 17`` that ratio is e^-17 = 4.1e-8 < 2^-24: below half a float32 ulp of the
row's normaliser, so in float the rewrite equals Keras' -1e9 mask to float32 rounding (the
tests check it), and in int8 (output step 1/256) a masked weight rounds to exactly 0. The
price: the softmax input spans the scores' range + 17 (without a mask, the range alone).
A row with every position masked gets uniform weights over all positions, as with Keras.
Measured on the LM-shaped test model (tests/pipeline/keras/test_attention_e2e.py: 2 causal
blocks, QAT, full-int8): the int8 attention weights differ from the float model's by 0.006
and 0.012 mean (blocks 1, 2); with Keras' -1e9 instead, the softmax input's step becomes
3.9e6 and the weights differ by 0.058 and 0.073 mean, up to 0.8.

Integer (or boolean) attention masks first pass ``AttentionKeep``, which selects from the
constant table [0, 1] (a GATHER) instead of casting to float, so the .tflite stays full-int8
(a CAST to float would leave a float tensor); non-zero means keep.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np

from pipeline.core import keras_env
from pipeline.core.errors import ConversionError
from pipeline.keras import seqdense

HEADROOM = 17.0  # masked score = row minimum - HEADROOM (see the module docstring)
MHA = "MultiHeadAttention"


@dataclass(frozen=True)
class AttentionRoute:
    """How one MultiHeadAttention was rewritten (what coverage reports for it)."""
    name: str
    cls: str
    params: int
    parts: tuple[str, ...]
    detail: str


# long: four small layer classes sharing one registration
def _define(env) -> dict:
    tf, keras = env.tf, env.keras
    register = keras.utils.register_keras_serializable(package="qat_deploy")

    @register
    class AttentionScores(keras.layers.Layer):
        """Q·Kᵀ per head: (B, H, T, d), (B, H, S, d) -> (B, H, T, S)."""

        def call(self, inputs):
            q, k = inputs
            return tf.matmul(q, k, transpose_b=True)

        def compute_output_shape(self, input_shape):
            q, k = input_shape
            return tf.TensorShape(list(q[:-1]) + [k[-2]])

    @register
    class AttentionContext(keras.layers.Layer):
        """Attention weights · V per head: (B, H, T, S), (B, H, S, d) -> (B, H, T, d)."""

        def call(self, inputs):
            p, v = inputs
            return tf.matmul(p, v)

        def compute_output_shape(self, input_shape):
            p, v = input_shape
            return tf.TensorShape(list(p[:-1]) + [v[-1]])

    @register
    class AttentionMask(keras.layers.Layer):
        """Masked scores with a bounded range: kept scores unchanged, masked ones at the row
        minimum - headroom. Inputs: scores, or [scores, attention_mask (B, T, S)]."""

        def __init__(self, causal=False, headroom=HEADROOM, **kwargs):
            super().__init__(**kwargs)
            self.causal = bool(causal)
            self.headroom = float(headroom)

        def call(self, inputs):
            scores, mask = (inputs[0], inputs[1]) if isinstance(inputs, (list, tuple)) \
                else (inputs, None)
            keep = _keep(tf, scores, mask, self.causal)
            if keep is None:
                return scores
            low = tf.reduce_min(scores, axis=-1, keepdims=True) - self.headroom
            return scores * keep + (1.0 - keep) * low

        def compute_output_shape(self, input_shape):
            return input_shape[0] if isinstance(input_shape, (list, tuple)) and \
                isinstance(input_shape[0], (list, tuple, tf.TensorShape)) else input_shape

        def get_config(self):
            return {**super().get_config(), "causal": self.causal, "headroom": self.headroom}

    @register
    class AttentionKeep(keras.layers.Layer):
        """An integer or boolean attention mask as float 0/1 (non-zero: keep), selected from
        the constant [0, 1] (a GATHER): no float CAST in the .tflite. Not annotated (tfmot
        would put a fake-quant on the integer input); the converter quantizes the table."""

        def call(self, mask):
            idx = tf.cast(tf.not_equal(mask, tf.zeros_like(mask)), tf.int32)
            return tf.gather(tf.constant([0.0, 1.0], tf.float32), idx)

        def compute_output_shape(self, input_shape):
            return input_shape

    return {c.__name__: c for c in (AttentionScores, AttentionContext, AttentionMask,
                                    AttentionKeep)}


# The attention layers, created once tf_keras is loaded; registered as ``qat_deploy>Name`` so
# saved QAT models reload.
layer_classes = keras_env.once(_define)


def _keep(tf, scores, mask, causal: bool):
    """The float 0/1 keep-mask broadcastable to ``scores`` (B, H, T, S), or None."""
    keep = None
    if mask is not None:
        keep = tf.cast(mask, scores.dtype)
        while keep.shape.rank < scores.shape.rank:  # as Keras: the heads axis at -3
            keep = tf.expand_dims(keep, axis=-3)
    if causal:
        t, s = scores.shape[-2], scores.shape[-1]
        if t is None or s is None:
            shape = tf.shape(scores)
            t, s = shape[-2], shape[-1]
        tri = tf.linalg.band_part(tf.ones((t, s), scores.dtype), -1, 0)
        keep = tri if keep is None else keep * tri
    return keep


def is_rewritable(keras, layer) -> bool:
    return type(layer) is keras.layers.MultiHeadAttention


def _refuse(layer, what: str, value, fix: str):
    raise ConversionError(f"Cannot rewrite layer {layer.name} ({type(layer).__name__}) for "
                          f"QAT: {what}", value, fix)


def _bind(layer, args, kwargs) -> dict:
    sig = inspect.signature(layer.call)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        _refuse(layer, "its call arguments are not understood", str(exc),
                "Call it as mha(query, value, key=None, attention_mask=None, "
                "use_causal_mask=False)")
    return dict(bound.arguments)


def _check(layer, call: dict, originals: list) -> None:
    if call.get("return_attention_scores"):
        _refuse(layer, "return_attention_scores=True", True,
                "Return only the attention output from the model")
    q = call["query"]
    if q.shape.rank != 3 or tuple(layer._attention_axes or (1,)) != (1,):
        _refuse(layer, "only (batch, time, features) inputs with attention over time are "
                "rewritten", f"query rank {q.shape.rank}, attention_axes "
                f"{layer._attention_axes}", "Reshape the input to (batch, time, features) "
                "or exclude the layer with annotate.exclude")
    if any(getattr(t, "_keras_mask", None) is not None for t in originals):
        _refuse(layer, "its inputs carry implicit Keras masks (mask_zero / Masking)",
                "an input with _keras_mask", "Pass the mask explicitly as attention_mask")
    out_shape = layer._output_shape
    if out_shape is not None and np.ndim(out_shape) > 0 and len(out_shape) != 1:
        _refuse(layer, "a multi-dimensional output_shape", out_shape,
                "Use an integer output_shape (or None)")


def rewrite(keras, layer, args, kwargs, originals: list, unique) -> tuple[object, AttentionRoute]:
    """Replace one MultiHeadAttention call (its mapped ``args``/``kwargs``) by primitives;
    returns (output tensor, route). ``unique(base)`` gives an unused layer name."""
    L = keras.layers
    call = _bind(layer, args, kwargs)
    _check(layer, call, originals)
    cls = layer_classes()
    query, value = call["query"], call["value"]
    key = call.get("key")
    key = value if key is None else key
    heads, kd = layer._num_heads, layer._key_dim
    vd = layer._value_dim or kd
    n = layer.name
    made: list = []

    def add(new_layer, *inputs):
        made.append(new_layer)
        return new_layer(*inputs)

    def linear(x, units, use_bias, name, weights):
        layers, w = seqdense.dense(keras, units, use_bias, None, name, weights, unique)
        made.extend(layers)
        return seqdense.call(layers, w, x)

    def project(x, dense, dim, tag, scale=1.0):
        d = linear(x, heads * dim, dense.bias is not None, unique(f"{n}_{tag}"),
                   _dense_weights(dense, heads * dim, scale))
        t = x.shape[1] if x.shape[1] is not None else -1  # static: no shape ops in TFLite
        h = add(L.Reshape((t, heads, dim), name=unique(f"{n}_{tag}_heads")), d)
        return add(L.Permute((2, 1, 3), name=unique(f"{n}_{tag}_perm")), h)

    q = project(query, layer._query_dense, kd, "q", 1.0 / math.sqrt(float(kd)))
    k = project(key, layer._key_dense, kd, "k")
    v = project(value, layer._value_dense, vd, "v")
    s = add(cls["AttentionScores"](name=unique(f"{n}_scores")), [q, k])
    mask = call.get("attention_mask")
    causal = bool(call.get("use_causal_mask"))
    if mask is not None and not mask.dtype.is_floating:
        mask = add(cls["AttentionKeep"](name=unique(f"{n}_keep")), mask)
    if mask is not None or causal:
        masker = cls["AttentionMask"](causal=causal, name=unique(f"{n}_mask"))
        s = add(masker, [s, mask] if mask is not None else s)
    p = add(L.Softmax(axis=-1, name=unique(f"{n}_softmax")), s)
    if layer._dropout:
        p = add(L.Dropout(layer._dropout, name=unique(f"{n}_dropout")), p)
    c = add(cls["AttentionContext"](name=unique(f"{n}_context")), [p, v])
    c = add(L.Permute((2, 1, 3), name=unique(f"{n}_out_perm")), c)
    t = query.shape[1] if query.shape[1] is not None else -1
    c = add(L.Reshape((t, heads * vd), name=unique(f"{n}_merge")), c)
    dense = layer._output_dense
    out_dim = int(dense.kernel.shape[-1])
    out = linear(c, out_dim, dense.bias is not None, unique(f"{n}_output"),
                 _dense_weights(dense, out_dim, 1.0))
    return out, AttentionRoute(n, MHA, int(layer.count_params()),
                               tuple(m.name for m in made), _detail(len(made), causal, mask))


def _detail(parts: int, causal: bool, mask) -> str:
    masks = ("causal mask" if causal else "") + (" + " if causal and mask is not None else "") \
        + ("attention_mask" if mask is not None else "")
    return (f"rewritten into {parts} layers: Dense projections (int8 FULLY_CONNECTED), "
            "Q·Kᵀ and weights·V as fake-quantized matmuls (int8 BATCH_MATMUL), Keras "
            "Softmax (int8 SOFTMAX)" + (f", {masks} at row min - {HEADROOM:g}" if masks
                                        else ""))


def _dense_weights(einsum_dense, units: int, scale: float) -> list:
    """An EinsumDense projection's kernel (and bias) as a Dense layer's, times ``scale``:
    (d, heads, dim) -> (d, heads*dim) and (heads, dim, d) -> (heads*dim, d), row-major as
    the Reshape layers around them."""
    c = np.float32(scale)
    out = [(einsum_dense.kernel.numpy().reshape(-1, units) * c).astype(np.float32)]
    if einsum_dense.bias is not None:
        out.append((einsum_dense.bias.numpy().reshape(units) * c).astype(np.float32))
    return out
