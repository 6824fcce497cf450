"""kws_dscnn: the MLPerf Tiny keyword-spotting DS-CNN on synthesised speech (dataset ``kws``).

The architecture of the MLPerf Tiny KWS reference (mlcommons/tiny,
benchmark/training/keyword_spotting/keras_model.py, model_name 'ds_cnn'): input 49 x 10 x 1
MFCCs; Conv2D 64 (10, 4) stride 2 'same' + BatchNorm + ReLU + Dropout 0.2; four
depthwise-separable blocks (DepthwiseConv2D 3x3 'same' + BN + ReLU, Conv2D 64 1x1 + BN +
ReLU); Dropout 0.4; AveragePooling2D (24, 5); Flatten; Dense 12. L2 weight decay 1e-4 on
the Conv2D kernels, as there (the reference also passes kernel_regularizer to
DepthwiseConv2D, which Keras does not apply to a depthwise kernel: none here either). One
difference: the last Dense has no softmax (the model outputs logits, trained with
from_logits=True; the argmax is the same). About 2.7M multiply-accumulates
and 23k parameters per 1 s clip.

The dataset (models/kws.py) and its features (models/kws_features.py) say what a phone must
compute before calling the model.
"""

from __future__ import annotations

from models.kws import INPUT_SHAPE, NUM_CLASSES

DATASET = "kws"
FILTERS = 64
WEIGHT_DECAY = 1e-4


def build(keras):
    """The untrained architecture (tf_keras is passed in: this module never imports it)."""
    L = keras.layers
    reg = keras.regularizers.l2(WEIGHT_DECAY)

    def bn_relu(h, name):
        h = L.BatchNormalization(name=f"{name}_bn")(h)
        return L.ReLU(name=f"{name}_relu")(h)

    inputs = keras.Input(INPUT_SHAPE, name="mfcc")
    h = L.Conv2D(FILTERS, (10, 4), strides=(2, 2), padding="same", kernel_regularizer=reg,
                 name="conv1")(inputs)
    h = bn_relu(h, "conv1")
    h = L.Dropout(0.2, name="conv1_dropout")(h)
    for i in range(1, 5):
        h = L.DepthwiseConv2D((3, 3), padding="same", name=f"ds{i}_dw")(h)
        h = bn_relu(h, f"ds{i}_dw")
        h = L.Conv2D(FILTERS, (1, 1), padding="same", kernel_regularizer=reg,
                     name=f"ds{i}_pw")(h)
        h = bn_relu(h, f"ds{i}_pw")
    h = L.Dropout(0.4, name="dropout")(h)
    pool = (INPUT_SHAPE[0] // 2, INPUT_SHAPE[1] // 2)
    h = L.AveragePooling2D(pool_size=pool, name="avg_pool")(h)
    h = L.Flatten(name="flatten")(h)
    outputs = L.Dense(NUM_CLASSES, name="logits")(h)
    return keras.Model(inputs, outputs, name="kws_dscnn")
