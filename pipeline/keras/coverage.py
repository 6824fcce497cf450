"""Coverage report: for each layer, whether tfmot quantizes it, passes it through, or needs a
fallback (and which), plus the share of layers and parameters quantized.

Shown by ``qat inspect --coverage MODEL`` and written at the start of every run
(``coverage.json`` / a section of report.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipeline.core.records import SCHEMA_VERSION
from pipeline.keras.plan import LayerPlan, LayerStatus


@dataclass
class Coverage:
    model: str
    layers: list[LayerPlan]
    notes: list[str] = field(default_factory=list)  # graph rewrites before annotation

    @property
    def counted(self) -> list[LayerPlan]:
        """The model's own layers: a rewritten layer (MultiHeadAttention) counts once, its
        parts not again."""
        return [l for l in self.layers if l.status is not LayerStatus.INPUT and not l.part_of]

    def share(self) -> dict:
        layers = self.counted
        params = sum(l.params for l in layers) or 1
        q = [l for l in layers if l.status.trains_quantized]
        return {"layers": len(layers), "layers_quantized": len(q),
                "layers_quantized_share": len(q) / max(1, len(layers)),
                "params": sum(l.params for l in layers),
                "params_quantized": sum(l.params for l in q),
                "params_quantized_share": sum(l.params for l in q) / params}

    def by_status(self) -> dict[str, int]:
        return {s.value: n for s, n in Counter(l.status for l in self.counted).items()}

    def fallbacks(self) -> dict[str, int]:
        """Fallback kinds used, by layer class."""
        return dict(Counter(f"{l.cls} ({l.status})" for l in self.counted
                            if l.status in (LayerStatus.FALLBACK, LayerStatus.CALIBRATED)))

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "model": self.model, **self.share(),
                "by_status": self.by_status(), "fallbacks": self.fallbacks(),
                "notes": self.notes, "per_layer": [l.to_dict() for l in self.layers]}

    def markdown(self, per_layer: bool = True) -> str:
        s = self.share()
        lines = [f"Quantized by QAT: {s['layers_quantized']}/{s['layers']} layers "
                 f"({100 * s['layers_quantized_share']:.0f} %), "
                 f"{s['params_quantized']:,}/{s['params']:,} parameters "
                 f"({100 * s['params_quantized_share']:.1f} %).", ""]
        lines += ["| status | layers | meaning |", "|---|--:|---|"]
        for status, n in sorted(self.by_status().items(), key=lambda kv: -kv[1]):
            lines.append(f"| {status} | {n} | {LayerStatus(status).meaning} |")
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        special = [l for l in self.counted if l.listed]
        if per_layer and special:
            lines += ["", "| layer | class | status | what happens |", "|---|---|---|---|"]
            for l in special:
                lines.append(f"| {l.name} | {l.cls} | {l.status} | {l.detail} |")
        return "\n".join(lines)
