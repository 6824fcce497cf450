"""Fixtures shared by the Keras 3 translator tests: the two Keras modules."""

import pytest

from pipeline.core import keras_env


@pytest.fixture(scope="module")
def k3():
    """Keras 3 (the translator's source)."""
    return keras_env.load_keras3()


@pytest.fixture(scope="module")
def tfk():
    """tf_keras (the translator's target)."""
    return keras_env.load().keras
