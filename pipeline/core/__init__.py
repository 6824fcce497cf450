"""Shared basics with no TensorFlow at import: errors and exit codes, bounded file reads,
result records, atomic artifacts, the one TensorFlow/Keras entry point (keras_env) and the
machine description. Imports nothing else from the pipeline."""
