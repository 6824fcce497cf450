"""Which Keras layers a TFLite tensor comes from, read from the names the converter writes.

The TFLite converter names an op's output tensor after the TensorFlow ops fused into it, each
a path ``<model>/<layer>/<op>``, joined by ``;`` with the op that produces the value first.
A Conv+BN+ReLU of a QAT model becomes one op whose output is named
``digits_cnn/quant_block1_relu/Relu;digits_cnn/quant_block1_bn/FusedBatchNormV3;
digits_cnn/quant_block1_conv/Conv2D1``. tfmot's QuantizeWrapper is named ``quant_<layer>``,
so a quantized layer shows up under that name and a layer left unwrapped (excluded, kept
float) under its own. Graph inputs and outputs are named after the signature instead
(``serving_default_image:0``, ``StatefulPartitionedCall:0``); the signature's keys carry the
layer names, so callers pass them as extra names. A layer name may itself contain ``/``
(tf_keras' MobileNetV3: ``expanded_conv/squeeze_excite/Conv``): the layer is the longest run
of path components after the model's name that names one, so a later component (``Conv``)
is not taken for another layer of that name (the stem ``Conv``).

Pure strings: used by the layer-parity check (stages/parity.py) and the float-island surgery
(tflite/islands.py).
"""

from __future__ import annotations

import re
from typing import Iterable

WRAPPER_PREFIX = "quant_"  # tfmot names the QuantizeWrapper of layer L "quant_L"
_SEPARATORS = re.compile(r"[/;:]")


def tokens(tensor_name: str) -> set[str]:
    """The path components of a tensor name (model, layer and op names, output index)."""
    return set(_SEPARATORS.split(tensor_name))


def primary(tensor_name: str) -> str:
    """The first of the fused op names: the op that produces the tensor's value."""
    return tensor_name.split(";")[0]


class LayerNames:
    """Matches tensor names against Keras layer names given in topological order.

    A layer is mentioned by a tensor name when the path after the model's name starts with
    the layer's name or the name of its tfmot wrapper (any component, for names without a
    model prefix such as signature names)."""

    def __init__(self, layers: Iterable[str]):
        self.order = list(dict.fromkeys(layers))
        self._by_token: dict[str, str] = {name: name for name in self.order}
        for name in self.order:  # a layer's own name wins over another's wrapper name
            self._by_token.setdefault(WRAPPER_PREFIX + name, name)
        self._longest = max((k.count("/") + 1 for k in self._by_token), default=1)

    def _at(self, parts: list[str], i: int) -> str | None:
        """The layer named by the longest run of ``parts`` starting at ``i``, if any."""
        for j in range(min(len(parts), i + self._longest), i, -1):
            name = self._by_token.get("/".join(parts[i:j]))
            if name is not None:
                return name
        return None

    def _found(self, tensor_name: str) -> set[str]:
        found = set()
        for path in tensor_name.split(";"):
            parts = _SEPARATORS.split(path)
            # <model>/<layer path>/<op...>: the layer path starts after the model's name
            # (a later component such as "Conv" may spell another layer's name)
            for i in ([1] if len(parts) >= 3 else range(len(parts))):
                name = self._at(parts, i)
                if name is not None:
                    found.add(name)
        return found

    def layers_in(self, tensor_name: str, extra: Iterable[str] = ()) -> list[str]:
        """The layers that ``tensor_name`` (or one of the ``extra`` names, e.g. signature
        keys) mentions, in layer order: the last holds the tensor's value, the ones before it
        were fused into it."""
        found = self._found(tensor_name) | {self._by_token[t] for t in extra
                                            if t in self._by_token}
        return [name for name in self.order if name in found]

    def mentions(self, tensor_name: str) -> bool:
        return bool(self._found(tensor_name))


def output_position(names: Iterable[str], wanted: str) -> int | None:
    """Where the output ``wanted`` (its Keras name) is among ``names``: the name itself, or
    tfmot's ``quant_<name>`` (a QAT model's output layer is its QuantizeWrapper, and the
    .tflite converted from it names the output so). None when absent."""
    names = list(names)
    for candidate in (wanted, f"quant_{wanted}"):
        if candidate in names:
            return names.index(candidate)
    return None
