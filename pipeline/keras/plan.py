"""What QAT does with each layer: one ``LayerStatus`` per layer, carried by a ``LayerPlan``.

``fallbacks.plan`` gives the default status, the annotate stage's policy narrows it, the
coverage report counts and explains it. The statuses are str-valued, so a plan read back from
report.json (plain strings) compares equal to the members.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass


class LayerStatus(str, enum.Enum):
    QUANTIZED = "quantized"      # tfmot's registry or our QuantizeConfig for the layer kind
    #                              (EinsumDense, LayerNormalization, attention matmuls), or a
    #                              layer rewritten into such layers (MultiHeadAttention)
    FOLDED = "folded"            # BatchNormalization folded into the conv before it
    PASSTHROUGH = "passthrough"  # registry no-op (shape ops, pooling, dropout): int8 passes
    FALLBACK = "fallback"        # our QuantizeConfig
    CALIBRATED = "calibrated"    # not annotated; the converter calibrates it (still int8)
    EXCLUDED = "excluded"        # policy: not annotated (the converter still makes it int8)
    KEEP_FLOAT = "keep_float"    # policy: stays float in the .tflite
    INPUT = "input"              # the model's input layer (not counted)

    def __str__(self) -> str:  # reports show the value, as JSON does
        return self.value

    @property
    def meaning(self) -> str:
        """One line for the coverage report's legend."""
        return _MEANING.get(self, "")

    @property
    def trains_quantized(self) -> bool:
        """The layer is trained with int8 noise (QAT proper)."""
        return self in (LayerStatus.QUANTIZED, LayerStatus.FOLDED, LayerStatus.FALLBACK)

    @property
    def annotated(self) -> bool:
        """The annotate stage wraps the layer for tfmot's quantize_apply."""
        return self.trains_quantized or self is LayerStatus.PASSTHROUGH

    @property
    def special(self) -> bool:
        """Not tfmot's plain scheme: listed layer by layer in the coverage report."""
        return self in (LayerStatus.FALLBACK, LayerStatus.CALIBRATED, LayerStatus.EXCLUDED,
                        LayerStatus.KEEP_FLOAT)


_MEANING = {
    LayerStatus.QUANTIZED: "int8 in training: tfmot's 8-bit scheme, or our QuantizeConfig / "
                           "rewrite where named below",
    LayerStatus.FOLDED: "folded into its conv",
    LayerStatus.PASSTHROUGH: "no-op in tfmot (int8 passes through)",
    LayerStatus.FALLBACK: "our QuantizeConfig (tfmot refuses the layer)",
    LayerStatus.CALIBRATED: "not wrappable; the converter calibrates it",
    LayerStatus.EXCLUDED: "excluded by policy (the converter still makes it int8)",
    LayerStatus.KEEP_FLOAT: "kept float by policy (mixed model)",
}


@dataclass(frozen=True)
class LayerPlan:
    name: str
    cls: str
    status: LayerStatus
    params: int
    detail: str = ""
    weight_attrs: tuple[str, ...] = ()
    quantize_output: bool = False
    inbound: tuple[str, ...] = ()  # names of the layers feeding it
    own_config: bool = False  # annotated with our QuantizeConfig (weight_attrs, output)
    parts: tuple[str, ...] = ()  # a rewritten layer (MultiHeadAttention): the layers it became
    part_of: str = ""  # one of those layers: the rewritten layer's name

    def __post_init__(self):
        # a plan rebuilt from report.json carries the status as a plain string
        object.__setattr__(self, "status", LayerStatus(self.status))
        for key in ("weight_attrs", "inbound", "parts"):  # JSON gives lists
            object.__setattr__(self, key, tuple(getattr(self, key)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        d["weight_attrs"] = list(self.weight_attrs)
        d["inbound"] = list(self.inbound)
        d["parts"] = list(self.parts)
        return d

    @property
    def listed(self) -> bool:
        """Shown layer by layer in the coverage report: not tfmot's plain scheme."""
        return not self.part_of and (self.status.special or self.own_config or
                                     bool(self.parts))


def rewritten_plan(name: str, cls: str, parts: list[LayerPlan], detail: str) -> LayerPlan:
    """The plan of a layer the graph rewrite replaced by ``parts`` (their plans, after the
    policy): kept float or excluded if any part is, quantized otherwise."""
    statuses = {p.status for p in parts}
    status = LayerStatus.QUANTIZED
    for s in (LayerStatus.KEEP_FLOAT, LayerStatus.EXCLUDED):
        if s in statuses:
            status = s
            detail = f"{detail}; part(s) {s.value} by policy"
            break
    return LayerPlan(name, cls, status, sum(p.params for p in parts), detail,
                     parts=tuple(p.name for p in parts))
