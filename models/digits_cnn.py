"""digits_cnn: a small CNN on scikit-learn's bundled 8x8 handwritten digits.

Real data, no download: ``sklearn.datasets.load_digits`` ships 1,797 images of 8x8 pixels with
values 0..16 (the UCI optdigits test set). Preprocessing: pixel / 16 -> float32 in [0, 1], shape
(8, 8, 1). The train/test split is part of the dataset definition (stratified, 25 % test,
split seed 0) so that every run and every seed is scored on the same 450 test images.

The architecture exercises what phones run: Conv2D+BatchNorm+ReLU (folded by the converter),
MobileNet-style depthwise-separable blocks (DepthwiseConv2D + 1x1 Conv2D), pooling and a Dense
classifier producing logits. About 80k multiply-accumulates per image.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import DataError

DATASET = "digits"
SPLIT_SEED = 0
TEST_FRACTION = 0.25
NUM_CLASSES = 10
INPUT_SHAPE = (8, 8, 1)
PREPROCESSING = {
    "source": "sklearn.datasets.load_digits (8x8 grayscale, integer pixels 0..16)",
    "transform": "x = pixels / 16.0 as float32, shape (8, 8, 1), range [0, 1]",
    "input_range": [0.0, 1.0],
    "labels": "integers 0..9 (the digit)",
    "split": f"stratified, {int(TEST_FRACTION * 100)} % test, split seed {SPLIT_SEED}",
}


def load_dataset(*, cache_dir=None, train: int = 0, test: int = 0) -> dict:
    """The digits splits (shipped with scikit-learn: nothing to cache); ``train``/``test`` > 0
    take the first N of each stratified, shuffled split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # scikit-learn comes with the `qat` extra, not the core install
        raise DataError("The bundled digits dataset needs scikit-learn, which is not installed "
                        "(core install)", f"import sklearn: {exc}",
                        "pip install 'qat-deploy[qat]', or pass an .npz file") from exc

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    n_train, n_test = (train or len(x_train)), (test or len(x_test))
    return {"x_train": x_train[:n_train], "y_train": y_train[:n_train],
            "x_test": x_test[:n_test], "y_test": y_test[:n_test],
            "preprocessing": PREPROCESSING}


def build(keras):
    """The untrained architecture (tf_keras is passed in: this module never imports it)."""
    L = keras.layers
    # momentum 0.9, not Keras' 0.99: with ~40 steps per epoch the moving statistics would
    # otherwise lag the (small-variance) activations for hundreds of steps, and inference-mode
    # accuracy stays at chance level long after training accuracy is high.
    bn = lambda name: L.BatchNormalization(momentum=0.9, name=name)

    def conv_bn_relu(h, filters, kernel, name):
        h = L.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(h)
        h = bn(f"{name}_bn")(h)
        return L.ReLU(name=f"{name}_relu")(h)

    inputs = keras.Input(INPUT_SHAPE, name="image")
    h = conv_bn_relu(inputs, 16, 3, "block1")
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="block2_dwconv")(h)
    h = bn("block2_bn")(h)
    h = L.ReLU(name="block2_relu")(h)
    h = conv_bn_relu(h, 32, 1, "block2_pw")
    h = L.MaxPooling2D(2, name="pool")(h)
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="block3_dwconv")(h)
    h = bn("block3_bn")(h)
    h = L.ReLU(name="block3_relu")(h)
    h = conv_bn_relu(h, 48, 1, "block3_pw")
    h = L.GlobalAveragePooling2D(name="gap")(h)
    h = L.Dropout(0.2, name="dropout")(h)
    outputs = L.Dense(NUM_CLASSES, name="logits")(h)
    return keras.Model(inputs, outputs, name="digits_cnn")
