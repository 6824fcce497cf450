"""The Keras side: graph surgery, fallback QuantizeConfigs and layer plans, activation
ranges, finite-weight checks and the Keras 3 -> tf_keras translator. Imports only
``pipeline.core`` (TensorFlow through ``core.keras_env``); never the TFLite side."""
