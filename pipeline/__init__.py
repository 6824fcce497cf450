"""QAT deployment pipeline: Keras model -> QAT fine-tune -> full-int8 LiteRT model, verified.

Importing this package is cheap: TensorFlow is only imported (via ``pipeline.core.keras_env``) by the
stages that need it.
"""

__version__ = "0.1.0"
