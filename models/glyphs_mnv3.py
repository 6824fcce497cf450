"""glyphs_mnv3: MobileNetV3-Small (tf_keras.applications) on the glyphs dataset.

The phone architecture as Keras ships it, untrained (``weights=None``): ``MobileNetV3Small``
with ``alpha`` ALPHA, ``minimalistic=False`` (hard-swish activations and squeeze-excite blocks
kept), its own classification head (GlobalAveragePooling -> 1x1 Conv 1024 -> hard-swish ->
Dropout -> 1x1 Conv to the 33 classes -> logits) and its preprocessing layer
(``Rescaling(1/127.5, offset=-1)``), so the phone feeds raw RGB pixels 0..255
(models/glyphs.py, PREPROCESSING).

tf_keras writes hard-swish as TFOpLambda arithmetic (``x + 3``, ``* 1/6``) and squeeze-excite as
GlobalAveragePooling2D(keepdims) -> Conv2D -> ReLU -> Conv2D -> hard-sigmoid -> Multiply; the
pipeline rewrites the arithmetic into layers and annotates the rest (pipeline/keras/graph.py,
pipeline/keras/fallbacks.py).

One change from the application's defaults: BatchNormalization momentum 0.9 instead of
0.999. The float baseline trains for ~1-2k steps; with 0.999 the moving statistics (used at
inference) would still lag the activations by hundreds of steps when training stops.
"""

from __future__ import annotations

from models.glyphs import INPUT_SHAPE, NUM_CLASSES

DATASET = "glyphs"
ALPHA = 0.5
BN_MOMENTUM = 0.9


def build(keras):
    """The untrained architecture (tf_keras is passed in: this module never imports it)."""
    base = keras.applications.MobileNetV3Small(
        input_shape=INPUT_SHAPE, alpha=ALPHA, minimalistic=False, include_top=True,
        weights=None, classes=NUM_CLASSES, dropout_rate=0.2, classifier_activation=None,
        include_preprocessing=True)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return keras.Model(base.inputs, base.outputs, name="glyphs_mnv3")
