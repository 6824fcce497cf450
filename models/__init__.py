"""Bundled reference models and their offline datasets.

Each zoo model is a module with ``build(keras)`` (an untrained tf_keras architecture),
``DATASET`` (the name of its dataset) and a TOML recipe beside it (the demo's default settings).
Datasets are functions returning arrays; none downloads anything.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class ZooModel:
    name: str
    module: str
    dataset: str
    description: str

    def build(self, keras):
        return importlib.import_module(self.module).build(keras)

    @property
    def recipe(self) -> Path:
        return _HERE / f"{self.name}.toml"


@dataclass(frozen=True)
class ZooDataset:
    name: str
    module: str
    description: str

    def load(self, *, cache_dir=None, train: int = 0, test: int = 0) -> dict:
        """Arrays x_train, y_train, x_test, y_test plus 'preprocessing' (a dict) and, for
        generated datasets, 'card' (models/datacache.py). ``train``/``test`` > 0 ask for that
        many samples (generated datasets generate that many; shipped ones take the first N of
        their shuffled splits); ``cache_dir`` is where generated data is cached."""
        return importlib.import_module(self.module).load_dataset(
            cache_dir=cache_dir, train=train, test=test)


MODELS: dict[str, ZooModel] = {
    "digits_cnn": ZooModel(
        "digits_cnn", "models.digits_cnn", "digits",
        "Small CNN (Conv2D+BN+ReLU, DepthwiseConv2D, pooling, Dense) for 8x8 digits"),
    "kws_dscnn": ZooModel(
        "kws_dscnn", "models.kws_dscnn", "kws",
        "MLPerf Tiny keyword-spotting DS-CNN (Conv2D, 4 depthwise-separable blocks, average "
        "pooling, Dense) on 49x10 MFCCs of 1 s clips, 12 classes"),
    "glyphs_mnv3": ZooModel(
        "glyphs_mnv3", "models.glyphs_mnv3", "glyphs",
        "MobileNetV3-Small (tf_keras.applications, alpha 0.5, hard-swish + squeeze-excite) "
        "for 48x48 RGB characters on photographs"),
    "char_lm": ZooModel(
        "char_lm", "models.char_lm", "stdlib_text",
        "Decoder-only transformer (3 blocks, width 128, 4-head causal self-attention, GELU "
        "feed-forward) predicting the next character of Python source, 64-character windows"),
}

DATASETS: dict[str, ZooDataset] = {
    "digits": ZooDataset(
        "digits", "models.digits_cnn",
        "scikit-learn's bundled 8x8 handwritten digits (1,797 images), pixel/16, stratified split"),
    "kws": ZooDataset(
        "kws", "models.kws",
        "10 Speech Commands keywords + silence + unknown, synthesised with eSpeak NG voices, "
        "mixed with noise at 30/20/15/10 dB SNR, MLPerf Tiny MFCCs; test voices held out"),
    "glyphs": ZooDataset(
        "glyphs", "models.glyphs",
        "0-9 and A-Z without I/O/Q rendered with matplotlib's fonts over crops of scikit-image's "
        "photographs (48x48 RGB uint8, 40,000 train / 4,000 test; disjoint photo regions)"),
    "stdlib_text": ZooDataset(
        "stdlib_text", "models.char_lm_data",
        "CPython's standard-library *.py source (test suites excluded) as 64-character windows "
        "with next-character targets, 98-symbol vocabulary; train/test split by file"),
}


def zoo_names() -> list[str]:
    return sorted(MODELS)


def recipe_path(name: str) -> Path | None:
    m = MODELS.get(name)
    return m.recipe if m and m.recipe.is_file() else None


def get_model(name: str) -> ZooModel | None:
    return MODELS.get(name)


def get_dataset(name: str) -> ZooDataset | None:
    return DATASETS.get(name)
