"""Per-layer QAT plan: what tfmot's default 8-bit scheme does with each layer, and a
fallback QuantizeConfig for the layers it refuses.

tfmot 0.8's registry (default_8bit_quantize_registry.py) quantizes a fixed list of layer
classes; everything else makes ``quantize_apply`` fail with "Layer X is not supported"
(tf_keras.applications: Rescaling/Normalization/Multiply in EfficientNet, BatchNormalization
not after a conv in DenseNet/NASNet, TFOpLambda hard-swish in MobileNetV3). The fallback
(``FallbackQuantizeConfig``) quantizes the layer's kernel-like weights per tensor and its
output with tfmot's own quantizers, so the layer trains with int8 noise and the converter
finds an int8 range for its output; layers that cannot be wrapped at all (TFOpLambda, Lambda)
stay unannotated and the representative dataset calibrates them at conversion. Either way
the .tflite stays full-int8.
"""

from __future__ import annotations

from pipeline.core import keras_env
from pipeline.keras import attention, layernorm, seqdense
from pipeline.keras.plan import LayerPlan, LayerStatus

# Weight attributes a fallback fake-quantizes (per tensor, symmetric, narrow range: tfmot's
# LastValueQuantizer settings for kernels).
_WEIGHT_ATTRS = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")
# Activation names tfmot's Default8BitActivationQuantizeConfig accepts (0.8.1).
_ACTIVATION_OK = {"relu", "swish", "gelu", "relu6", "linear", "softmax", "sigmoid", "tanh"}
# Activation names QuantizeAwareActivation accepts inside Dense/Conv (0.8.1).
_INNER_ACTIVATION_OK = {"softmax", "sigmoid", "tanh", "gelu", "linear", "relu", "swish"}
# Layers a BatchNormalization right after them is folded into (tfmot's Conv2DBatchNorm*,
# DenseBatchNorm* transforms; SeparableConv is first split into depthwise + pointwise convs).
_CONVS = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "SeparableConv1D", "Dense"}
# Not in the registry but rewritten by tfmot's layout transforms into layers that are
# (SeparableConvQuantize / SeparableConv1DQuantize): annotate them like any supported layer.
_TRANSFORMED = {"SeparableConv2D", "SeparableConv1D"}
# TFLite's int8 AVERAGE_POOL_2D requires the output scale to equal the input scale, but tfmot's
# registry gives AveragePooling an output quantizer of its own; after a conv the two ranges
# differ and the converter fails ("quantization parameters violate the same scale
# constraint", seen on DenseNet121's transition blocks). So no output quantizer: it inherits.
_SAME_SCALE = {"AveragePooling1D", "AveragePooling2D"}
_UNWRAPPABLE = {"TFOpLambda", "Lambda", "SlicingOpLambda"}
# Affine layers the converter folds into neighbouring quantization parameters or runs as
# int8 MUL/ADD after calibration. A fake-quant on their output instead leaves a
# DEQUANTIZE->QUANTIZE pair behind the model input (seen with MobileNetV3's preprocessing
# Rescaling in TF 2.21), so they are left to calibration.
_AFFINE = {"Rescaling", "Normalization"}
# Layers tfmot's registry lacks that get a QuantizeConfig of their own (the fallback class,
# with these settings): QUANTIZED, the route in the detail. Kernels per tensor, symmetric,
# narrow range, as tfmot's Dense; outputs by tfmot's MovingAverageQuantizer.
_OWN = {
    "EinsumDense": (("kernel",), "our QuantizeConfig: kernel int8 per tensor (as tfmot's "
                    "Dense), output fake-quantized; int8 FULLY_CONNECTED / BATCH_MATMUL"),
    "LayerNormalization": ((), "our QuantizeConfig: output fake-quantized; the converter "
                           "lowers it to int8 MEAN / SQUARED_DIFFERENCE / RSQRT / MUL / ADD, "
                           "its intermediates calibrated from the representative data"),
    "AttentionScores": ((), "attention Q·Kᵀ, output fake-quantized: int8 BATCH_MATMUL"),
    "AttentionContext": ((), "attention weights·V, output fake-quantized: int8 BATCH_MATMUL"),
    "AttentionMask": ((), f"attention mask at row min - {attention.HEADROOM:g} (bounded "
                      "range), output fake-quantized: int8 MUL / ADD / MIN"),
    "Softmax": ((), "our QuantizeConfig: output fake-quantized on int8 SOFTMAX's fixed grid "
                "(scale 1/256, zero point -128; tfmot leaves it float)"),
    "SequenceDense": (("kernel",), "Dense on sequences (keras/seqdense.py): kernel int8 per "
                      "tensor (as tfmot's Dense), output fake-quantized; one int8 "
                      "FULLY_CONNECTED with an int32 bias"),
    # LayerNormalization's int8 steps (keras/layernorm.py)
    "LNMean": ((), "LayerNorm step: mean, output fake-quantized: int8 MEAN"),
    "LNCenter": ((), "LayerNorm step: x - mean, output fake-quantized: int8 SUB"),
    "LNSquare": ((), "LayerNorm step: squared deviation, output fake-quantized: int8 MUL"),
    "LNEpsilon": ((), "LayerNorm step: variance + epsilon, output fake-quantized: int8 ADD"),
    "LNRsqrt": ((), "LayerNorm step: 1/sqrt, output fake-quantized: int8 RSQRT"),
    "LNNormalize": ((), "LayerNorm step: deviation / std, output fake-quantized: int8 MUL"),
    "LNGamma": (("gamma",), "LayerNorm step: gamma (int8 per tensor), output fake-quantized: "
                "int8 MUL"),
    "LNBeta": (("beta",), "LayerNorm step: beta (int8 per tensor), output fake-quantized: "
               "int8 ADD"),
}


# Outputs TFLite's int8 kernels put on a fixed grid: the QAT model simulates that grid
# (FixedQuantizer) instead of learning a range the converter would override. SOFTMAX: scale
# 1/256, zero point -128, i.e. [0, 255/256].
FIXED_OUTPUT = {"Softmax": (0.0, 255.0 / 256.0)}

_CLASS = None


def config_class():
    """The fallback QuantizeConfig class, created once tfmot is loaded (keras_env is the only
    module that imports it) and registered so saved QAT models reload."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    env = keras_env.load()
    q = env.tfmot.quantization.keras

    @env.keras.utils.register_keras_serializable(package="qat_deploy")
    class FallbackQuantizeConfig(q.QuantizeConfig):
        """Fake-quantize the named weights (per tensor, ``weight_bits``: 8, or 4 for 4-bit
        QAT) and, optionally, the output (always 8-bit)."""

        def __init__(self, weight_attrs=(), quantize_output=True, output_range=None,
                     weight_bits=8):
            self.weight_attrs = list(weight_attrs)
            self.weight_bits = int(weight_bits)
            self.quantize_output = bool(quantize_output)
            self.output_range = None if output_range is None else \
                [float(v) for v in output_range]

        def get_weights_and_quantizers(self, layer):
            return [(getattr(layer, a), q.quantizers.LastValueQuantizer(
                num_bits=self.weight_bits, per_axis=False, symmetric=True, narrow_range=True))
                for a in self.weight_attrs]

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            for attr, weight in zip(self.weight_attrs, quantize_weights):
                setattr(layer, attr, weight)

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            if not self.quantize_output:
                return []
            if self.output_range is not None:  # a fixed grid (int8 SOFTMAX's)
                lo, hi = self.output_range
                return [q.quantizers.FixedQuantizer(num_bits=8, init_min=lo, init_max=hi,
                                                    narrow_range=False)]
            return [q.quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {"weight_attrs": self.weight_attrs, "quantize_output": self.quantize_output,
                    "output_range": self.output_range, "weight_bits": self.weight_bits}

    _CLASS = FallbackQuantizeConfig
    return _CLASS


def custom_objects() -> dict:
    """What quantize_scope needs to deserialize a QAT model that uses fallbacks."""
    cls = config_class()
    layers = {**attention.layer_classes(), **layernorm.layer_classes(),
              **seqdense.layer_classes()}
    return {"FallbackQuantizeConfig": cls, "qat_deploy>FallbackQuantizeConfig": cls,
            **layers, **{f"qat_deploy>{k}": v for k, v in layers.items()}}


def _activation_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class _Graph:
    """Who feeds whom in one model, from that model's own nodes. A layer shared with another
    model has nodes there too (graph.rebuild reuses the source model's layers), so the
    layer's own ``_inbound_nodes`` / ``_outbound_nodes`` would count those as well: a conv
    then seems to feed several layers and its BatchNormalization is not folded."""

    def __init__(self, model):
        self.inbound: dict[str, list] = {}
        self.consumers: dict[str, int] = {}
        for nodes in (getattr(model, "_nodes_by_depth", None) or {}).values():
            for node in nodes:
                src = node.inbound_layers
                src = list(src) if isinstance(src, (list, tuple)) else [src]
                self.inbound.setdefault(node.outbound_layer.name, []).extend(src)
                for l in src:
                    self.consumers[l.name] = self.consumers.get(l.name, 0) + 1

    def inbound_of(self, layer) -> list:
        if self.inbound:
            return list({id(l): l for l in self.inbound.get(layer.name, [])}.values())
        out = []  # no graph (a subclassed model): the layer's own nodes
        for node in getattr(layer, "_inbound_nodes", []) or []:
            inbound = node.inbound_layers
            out.extend(inbound if isinstance(inbound, (list, tuple)) else [inbound])
        return out

    def consumer_count(self, layer) -> int:
        if self.inbound:
            return self.consumers.get(layer.name, 0)
        return len(getattr(layer, "_outbound_nodes", []) or [])


def _takes_integers(layer) -> bool:
    try:
        dtypes = [t.dtype for t in (layer.input if isinstance(layer.input, (list, tuple))
                                    else [layer.input])]
    except (AttributeError, ValueError):  # multi-node layers have no single .input
        return False
    return any(getattr(d, "is_integer", False) for d in dtypes)


def plan_layer(layer, registry, graph: _Graph) -> LayerPlan:
    """The default plan for one layer of the model ``graph`` was made from (before the
    user's policy)."""
    cls = type(layer).__name__
    params = int(layer.count_params()) if layer.built else 0
    names = tuple(l.name for l in graph.inbound_of(layer))

    def mk(status: LayerStatus, detail: str = "", **kw) -> LayerPlan:
        return LayerPlan(layer.name, cls, status, params, detail, inbound=names, **kw)

    return _plan_by_class(layer, cls, graph, mk) or _plan_by_registry(layer, cls, registry, mk)


def _plan_by_class(layer, cls: str, graph: _Graph, mk) -> LayerPlan | None:
    """Layers whose plan follows from their class alone (None: ask tfmot's registry)."""
    if cls == "InputLayer":
        return mk(LayerStatus.INPUT)
    if cls in _UNWRAPPABLE:
        what = getattr(layer, "symbol", None) or cls
        return mk(LayerStatus.CALIBRATED, f"{what}: tfmot cannot wrap it; the converter "
                  "calibrates it from the representative data")
    if _takes_integers(layer):
        return mk(LayerStatus.CALIBRATED, f"{cls} reads integer ids: tfmot's input quantizer "
                  "cannot take them; the converter quantizes its table from the data")
    if cls in _OWN:
        attrs, detail = _OWN[cls]
        return mk(LayerStatus.QUANTIZED, detail, weight_attrs=attrs, quantize_output=True,
                  own_config=True)
    if cls in _TRANSFORMED:
        return mk(LayerStatus.QUANTIZED,
                  "split into depthwise + pointwise convs by tfmot's transforms")
    if cls in _SAME_SCALE:
        return mk(LayerStatus.FALLBACK, "same-scale op in TFLite: no output quantizer, it "
                  "keeps its input's scale", quantize_output=False)
    if cls in _AFFINE:
        return mk(LayerStatus.CALIBRATED, f"{cls} is affine: the converter folds it or "
                  "calibrates it as int8 MUL/ADD")
    if cls == "BatchNormalization":
        # tfmot's Conv+BN transforms only match a conv whose output feeds the BN alone
        if any(type(l).__name__ in _CONVS and graph.consumer_count(l) == 1
               for l in graph.inbound_of(layer)):
            return mk(LayerStatus.FOLDED, "folded into the preceding conv by tfmot's transforms")
        return mk(LayerStatus.FALLBACK, "BatchNormalization not after a conv: output quantized "
                  "(TFLite runs it as int8 MUL+ADD)", quantize_output=True)
    return None


def _plan_by_registry(layer, cls: str, registry, mk) -> LayerPlan:
    """tfmot's registry decides; what it refuses gets a fallback QuantizeConfig."""
    attrs = tuple(a for a in _WEIGHT_ATTRS if getattr(layer, a, None) is not None)
    if not registry.supports(layer):
        if attrs:
            return mk(LayerStatus.FALLBACK, f"{cls} not in tfmot's registry: "
                      f"{', '.join(attrs)} and output quantized", weight_attrs=attrs,
                      quantize_output=True)
        return mk(LayerStatus.FALLBACK, f"{cls} not in tfmot's registry: output quantized",
                  quantize_output=True)
    info = registry.get_quantize_config(layer)
    if cls == "Activation" and _activation_name(layer.activation) not in _ACTIVATION_OK:
        return mk(LayerStatus.FALLBACK, f"activation '{_activation_name(layer.activation)}' "
                  "unknown to tfmot: output quantized", quantize_output=True)
    act = getattr(layer, "activation", None)
    if cls != "Activation" and act is not None and \
            _activation_name(act) not in _INNER_ACTIVATION_OK:
        return mk(LayerStatus.FALLBACK, f"fused activation '{_activation_name(act)}' unknown to "
                  "tfmot: weights and output quantized", weight_attrs=attrs,
                  quantize_output=True)
    weights = getattr(info, "weight_attrs", None)
    acts = getattr(info, "activation_attrs", None)
    out = getattr(info, "quantize_output", None)
    if weights == [] and acts == [] and not out and cls != "Activation":
        return mk(LayerStatus.PASSTHROUGH, "no-op in tfmot's registry (int8 passes through)")
    return mk(LayerStatus.QUANTIZED, "tfmot default 8-bit scheme")


def plan(model) -> list[LayerPlan]:
    scheme = keras_env.load().tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    registry = scheme.get_quantize_registry()
    graph = _Graph(model)
    return [plan_layer(layer, registry, graph) for layer in model.layers]
