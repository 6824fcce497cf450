"""Android latency harness: benchmark ``.tflite`` models on phones over adb with TFLite's
``benchmark_model``, or on this machine with the LiteRT interpreter, under one protocol.

Importing the package is cheap and never imports TensorFlow (the heavy modules are imported by
the commands that need them). See docs/android-harness.md.
"""
