"""Annotate stage: decide per layer how QAT treats it, then ``quantize_apply``.

1. ``graph.rebuild``: nested models are flattened, TFOpLambda arithmetic becomes plain
   layers and MultiHeadAttention quantizable primitives (same function, checked by tests);
   a rewritten layer gets a plan of its own whose ``parts`` are the new layers' plans.
2. ``fallbacks.plan``: per layer, tfmot's registry, a fold into a conv, a pass-through, or a
   fallback QuantizeConfig for what tfmot refuses.
3. The policy (``[annotate]`` in the config) narrows it: ``include`` / ``exclude`` by
   full-match regular expression on the layer name or class (a pattern naming a rewritten
   layer applies to all its parts).
4. ``quantize_annotate_layer`` on each chosen layer (with the fallback config where needed)
   and tfmot's ``quantize_apply`` with its default 8-bit scheme, or, for 4-bit weights
   (``weight_bits=4``, the qat_w4a8 variant), its ``DefaultNBitQuantizeScheme`` with 4-bit
   weights and 8-bit activations: the same registry and transforms (Conv2D per channel,
   Dense per tensor; DepthwiseConv2D keeps 8-bit weights, as the aeq_w4a8 peer does), and
   fallback weights at 4 bits too. TF 2.21's converter turns those 4-bit fake-quantized
   weights into INT4 tensors (packed two a byte). Dense stays per tensor: a per-channel
   Dense kernel makes the converter fail ("'tfl.transpose' op has mismatched quantized
   axes", measured with TF 2.21).
"""

from __future__ import annotations

import re
from dataclasses import replace

from pipeline.core import keras_env
from pipeline.core.errors import ConfigError, ConversionError, first_line
from pipeline.keras import fallbacks, graph
from pipeline.keras.coverage import Coverage
from pipeline.keras.plan import LayerPlan, LayerStatus, rewritten_plan


def _matches(pattern: str, layer: LayerPlan) -> bool:
    return bool(re.fullmatch(pattern, layer.name) or re.fullmatch(pattern, layer.cls))


def apply_policy(plans: list[LayerPlan], policy) -> list[LayerPlan]:
    """Mark layers the policy leaves out as EXCLUDED; unknown patterns are errors."""
    if policy is None:
        return plans
    layers = [p for p in plans if p.status is not LayerStatus.INPUT]
    for key in ("include", "exclude", "keep_float", "int8_weights"):
        for pattern in getattr(policy, key, ()):
            if not any(_matches(pattern, p) for p in layers):
                names = ", ".join([p.name for p in layers][:8])
                raise ConfigError(f"annotate.{key} pattern matches no layer", repr(pattern),
                                  f"Patterns must match a whole layer name or class, e.g. "
                                  f"'{plans[-1].name}' or '{plans[-1].cls}' (layers: {names}, …)")
    parents = {p.name: p for p in plans if p.parts}
    out = [p if p.status is LayerStatus.INPUT or p.parts else
           _with_policy(p, policy, parents.get(p.part_of)) for p in plans]
    # A BatchNormalization is folded into its conv by tfmot's transforms only when both are
    # annotated: follow the conv's fate.
    by_name = {p.name: p for p in out}
    out = [replace(p, status=by_name[_conv_of(p, by_name)].status,
                   detail=f"follows its conv {_conv_of(p, by_name)}")
           if p.status is LayerStatus.FOLDED and _conv_of(p, by_name) else p for p in out]
    return with_parents(out)


def with_parents(plans: list[LayerPlan]) -> list[LayerPlan]:
    """Each rewritten layer's plan recomputed from its parts' plans."""
    parts: dict[str, list[LayerPlan]] = {}
    for p in plans:
        if p.part_of:
            parts.setdefault(p.part_of, []).append(p)
    return [rewritten_plan(p.name, p.cls, parts.get(p.name, []), p.detail) if p.parts else p
            for p in plans]


def _with_policy(p: LayerPlan, policy, parent: LayerPlan | None = None) -> LayerPlan:
    hit = (lambda x: _matches(x, p) or (parent is not None and _matches(x, parent)))
    left_out = (policy.include and not any(hit(x) for x in policy.include)) or \
        any(hit(x) for x in policy.exclude)
    if any(hit(x) for x in policy.keep_float):
        return replace(p, status=LayerStatus.KEEP_FLOAT, detail="kept float by policy: trains "
                       "in float and runs float32 between DEQUANTIZE/QUANTIZE in the .tflite")
    if left_out:
        return replace(p, status=LayerStatus.EXCLUDED, detail="excluded by annotate policy; "
                       "the converter still quantizes it from the representative data")
    if p.status is LayerStatus.FALLBACK and not policy.fallbacks:
        raise ConversionError(f"tfmot cannot quantize layer {p.name} ({p.cls}) and "
                              "fallbacks are disabled", "annotate.fallbacks = false",
                              "Enable annotate.fallbacks or exclude the layer")
    return p


def _conv_of(bn: LayerPlan, by_name: dict) -> str | None:
    """The excluded / kept-float conv a folded BatchNormalization follows, if any."""
    for n in bn.inbound:
        if by_name.get(n) is not None and \
                by_name[n].status in (LayerStatus.EXCLUDED, LayerStatus.KEEP_FLOAT):
            return n
    return None


def keep_float_layers(coverage) -> list[str]:
    return [p.name for p in coverage.layers
            if p.status is LayerStatus.KEEP_FLOAT and not p.parts]  # parts are listed


def prepare(model, policy=None):
    """Graph rewrites and the per-layer plan, without touching tfmot's quantize_apply:
    (model to annotate, Coverage). Cheap; run at the start of every run so a bad policy
    fails before any training."""
    rewritten = graph.rebuild(model, layernorm=True)
    notes = []
    if rewritten.flattened:
        notes.append(f"flattened nested model(s): {', '.join(rewritten.flattened)}")
    if rewritten.replaced:
        kinds = sorted({v.split("(")[0] for v in rewritten.replaced.values()})
        notes.append(f"rewrote {len(rewritten.replaced)} TFOpLambda op(s) as "
                     f"{', '.join(kinds)} layers")
    if rewritten.attention:
        notes.append(f"rewrote {len(rewritten.attention)} MultiHeadAttention layer(s) into "
                     "quantizable primitives (projections, matmuls, bounded mask, softmax): "
                     f"{', '.join(r.name for r in rewritten.attention)}")
    if rewritten.sequence_dense:
        notes.append(f"rewrote {len(rewritten.sequence_dense)} Dense layer(s) on sequences as "
                     "SequenceDense (one int8 FULLY_CONNECTED with an int32 bias): "
                     f"{', '.join(rewritten.sequence_dense)}")
    if rewritten.layernorm:
        notes.append(f"rewrote {len(rewritten.layernorm)} LayerNormalization layer(s) into "
                     "one fake-quantized layer per int8 op the converter runs for them")
    plans = apply_policy(_with_routes(fallbacks.plan(rewritten.model), rewritten.routes),
                         policy)
    if not any(p.status.trains_quantized for p in plans):
        raise ConfigError("No layer is left to quantize", "the annotate policy excludes all",
                          "Loosen annotate.include / annotate.exclude")
    return rewritten.model, Coverage(model.name, plans, notes)


def _with_routes(plans: list[LayerPlan], routes) -> list[LayerPlan]:
    """The plans with each rewritten layer's own plan before its first part, and its parts
    marked as such."""
    owner = {part: r for r in routes for part in r.parts}
    out, seen = [], set()
    for p in plans:
        r = owner.get(p.name)
        if r is not None and r.name not in seen:
            seen.add(r.name)
            out.append(LayerPlan(r.name, r.cls, LayerStatus.QUANTIZED, r.params, r.detail,
                                 parts=r.parts))
        out.append(replace(p, part_of=r.name) if r is not None else p)
    return with_parents(out)


# Layers whose weights stay 8-bit in a 4-bit-weight model, as in ai-edge-quantizer's
# aeq_w4a8 peer (stages/peers.py W4_INT8_OPS): both files then hold the same precision per op.
# A depthwise kernel is a few hundred bytes; its channels see only one input channel each.
W4_INT8_LAYERS = ("DepthwiseConv2D",)


def scheme(weight_bits: int = 8, int8_names: frozenset[str] = frozenset()):
    """tfmot's quantize scheme: its default 8-bit one, or n-bit with 4-bit weights and 8-bit
    activations (W4_INT8_LAYERS' classes and the layers named in ``int8_names`` keep 8-bit
    weights)."""
    env = keras_env.load()
    q = env.tfmot.quantization.keras
    if weight_bits == 8:
        return q.default_8bit.Default8BitQuantizeScheme()
    if weight_bits != 4:
        raise ConfigError("QAT weight bits must be 8 or 4", repr(weight_bits),
                          "Use qat_int8 (8-bit) or qat_w4a8 (4-bit weights)")
    layers = env.keras.layers

    class W4A8Scheme(q.experimental.default_n_bit.DefaultNBitQuantizeScheme):
        def get_quantize_registry(self):
            registry = super().get_quantize_registry()
            table = registry._layer_quantize_map  # tfmot 0.8: layer class -> config
            for name in W4_INT8_LAYERS:
                cls = getattr(layers, name)
                table[cls] = _with_bits(table[cls], 8)
            by_class = registry.get_quantize_config

            def get_quantize_config(layer):
                # tfmot hands every Conv2D the same config object (one quantizer for all):
                # each layer gets its own, so one layer's quantizer is that layer's alone
                config = by_class(layer)
                return _with_bits(config, 8 if layer.name in int8_names else None)
            registry.get_quantize_config = get_quantize_config
            return registry

    return W4A8Scheme(num_bits_weight=4, num_bits_activation=8)


def _with_bits(config, bits: int | None):
    """A new tfmot n-bit config of the same class and attributes, with ``bits``-bit weights
    (None: its own)."""
    if not getattr(config, "weight_attrs", None):
        return config
    return type(config)(config.weight_attrs, config.activation_attrs, config.quantize_output,
                        num_bits_weight=bits or config._num_bits_weight,
                        num_bits_activation=config._num_bits_activation)


def int8_weight_layers(coverage, policy) -> frozenset[str]:
    """The annotated layers ``policy.int8_weights`` names (a rewritten layer's pattern covers
    its parts): they keep 8-bit weights in a 4-bit-weight model."""
    patterns = getattr(policy, "int8_weights", ()) if policy is not None else ()
    parents = {p.name: p for p in coverage.layers if p.parts}
    def named(p) -> bool:
        return any(_matches(x, p) or (p.part_of in parents and _matches(x, parents[p.part_of]))
                   for x in patterns)
    return frozenset(p.name for p in coverage.layers if not p.parts and p.params and named(p)
                     and p.status in (LayerStatus.QUANTIZED, LayerStatus.FALLBACK))


def apply(model, policy=None, *, weight_bits: int = 8):  # long: annotate, apply, blame
    """Return (qat_model, coverage). ``policy`` is an AnnotateConfig (or None: all layers);
    ``weight_bits``: 8, or 4 for 4-bit weights with 8-bit activations."""
    env = keras_env.load()
    q = env.tfmot.quantization.keras
    keras = env.keras
    source, coverage = prepare(model, policy)
    int8_names = int8_weight_layers(coverage, policy) if weight_bits != 8 else frozenset()
    chosen = scheme(weight_bits, int8_names)
    if weight_bits != 8:
        kept = f"; 8-bit weights kept by annotate.int8_weights: {', '.join(sorted(int8_names))}" \
            if int8_names else ""
        coverage = replace(coverage, notes=coverage.notes + [
            f"weights fake-quantized at {weight_bits} bits (tfmot's DefaultNBitQuantizeScheme; "
            "activations 8-bit; DepthwiseConv2D 8-bit): the converter writes them as INT4 "
            f"tensors{kept}"])
    status = {p.name: p for p in coverage.layers}
    cls = fallbacks.config_class()

    def annotate_layer(layer):
        p = status.get(layer.name)
        if p is None or not p.status.annotated:
            return layer
        if p.status is LayerStatus.FALLBACK or p.own_config:
            bits = 8 if p.cls in W4_INT8_LAYERS or p.name in int8_names else weight_bits
            return q.quantize_annotate_layer(layer, cls(p.weight_attrs, p.quantize_output,
                                                        fallbacks.FIXED_OUTPUT.get(p.cls), bits))
        return q.quantize_annotate_layer(layer)

    plain = source is model and policy is None and not any(
        p.status.special or p.own_config for p in coverage.layers)
    # quantize_apply clones the model through its config: the model's own layer classes
    # (e.g. ConvNeXt's LayerScale in tf_keras.applications) must be resolvable by name.
    own = {type(l).__name__: type(l) for l in source.layers}
    # tfmot's transforms add unnamed layers: their automatic names must not repeat ours.
    keras_env.reserve_layer_names({l.name for m in (model, source)
                                   for l in graph.all_layers(m)})
    try:
        with q.quantize_scope({**own, **fallbacks.custom_objects()}):
            annotated = q.quantize_annotate_model(model) if plain else \
                keras.models.clone_model(source, clone_function=annotate_layer)
            qat_model = q.quantize_apply(annotated, chosen)
    except (RuntimeError, ValueError, TypeError, AttributeError, KeyError,
            NotImplementedError) as exc:
        layer = failing_layer(exc, [model, source])
        if layer is None:
            raise ConversionError("tfmot could not annotate the model for QAT (no single layer "
                                  "could be blamed)", first_line(exc, 300),
                                  "Exclude layers with annotate.exclude (names in "
                                  "`qat inspect --coverage`) until it passes")
        raise ConversionError(f"tfmot could not annotate layer {layer.name} "
                              f"({type(layer).__name__}) for QAT", first_line(exc, 300),
                              f"Exclude it with annotate.exclude = ['{layer.name}'] (the "
                              "converter then calibrates it) or replace it with built-in layers")
    return qat_model, coverage


def weight_quantizers(qat_model) -> dict[str, list]:
    """Wrapped layer name -> the tfmot weight quantizers of its QuantizeWrapper (each has a
    ``num_bits``)."""
    out = {}
    for layer in graph.all_layers(qat_model):
        quantizers = [q for _, q, _ in getattr(layer, "_weight_vars", None) or ()]
        if quantizers:
            out[getattr(layer.layer, "name", layer.name)] = quantizers
    return out


def weight_bits_of(qat_model) -> int:
    """The fewest bits any weight of a QAT model is fake-quantized to (8 when none is):
    4 for a model trained as qat_w4a8."""
    return min((getattr(q, "num_bits", 8) for qs in weight_quantizers(qat_model).values()
                for q in qs), default=8)


def failing_layer(exc: BaseException, models: list):
    """The layer of ``models`` a failure inside tfmot / Keras happened in: the innermost
    traceback frame holding one of their layers (or a tfmot wrapper of one) as a local."""
    layers = {id(l): l for m in models for l in graph.all_layers(m)
              if not getattr(l, "_is_graph_network", False)}
    names = {l.name: l for l in layers.values()}
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            try:
                inner = getattr(value, "layer", value)  # QuantizeAnnotate / QuantizeWrapper
            except Exception:  # any object's __getattr__ may raise anything
                continue
            if id(inner) in layers:
                return layers[id(inner)]
            name = getattr(inner, "name", None)
            if isinstance(name, str) and name in names and \
                    type(inner).__name__ == type(names[name]).__name__:
                return names[name]  # a clone of one (quantize_apply clones the model)
    return None
