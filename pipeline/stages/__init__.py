"""The stages of the main job in data-path order (config, data, model loading, annotate,
finetune, convert, verify, parity, gates, report) and ``run``, which chains them. May import
the core, Keras and TFLite sides."""
