"""The TFLite side: bounded flatbuffer reader and model view, float islands, the LiteRT
runtimes, the isolated child, reference bundles and `qat inspect`. Imports only
``pipeline.core``; never the Keras side."""
