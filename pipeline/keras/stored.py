"""What a Keras model file stores, read as data: its JSON texts and the model config's shape.

Shared by the Keras 2 loader (pipeline/stages/modelio.py) and the Keras 3 reader (keras3.py):
both read a file's config before any layer is deserialized, and fail with one ModelFileError
line that names the file and the part that is wrong.
"""

from __future__ import annotations

import json

from pipeline.core.errors import ModelFileError

RESAVE = "Re-save the model with tf_keras model.save()"


def parse_json(raw, path, what: str):
    """JSON text stored in a model file, as data; a one-line ModelFileError otherwise."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFileError(f"The model's {what} is not UTF-8 text", f"{path} (byte "
                                 f"{exc.start})", RESAVE)
    if not isinstance(raw, str):
        raise ModelFileError(f"The model's {what} is not JSON text",
                             f"{path} (a {type(raw).__name__})", RESAVE)
    try:
        return json.loads(raw)
    except RecursionError:
        raise ModelFileError(f"The model's {what} is nested too deeply", path, RESAVE)
    except ValueError as exc:
        raise ModelFileError(f"The model's {what} is not valid JSON",
                             f"{path} ({str(exc)[:200]})", RESAVE)


def check_config(config, path, what: str) -> dict:
    """A Keras model config is {"class_name": ..., "config": {...} or [...]}."""
    if not isinstance(config, dict):
        raise ModelFileError(f"The model's {what} is not a Keras model config (expected a JSON "
                             "object with class_name and config)",
                             f"{path} (a JSON {type(config).__name__})", RESAVE)
    missing = [k for k in ("class_name", "config") if k not in config]
    if missing or not isinstance(config["class_name"], str) or \
            not isinstance(config["config"], (dict, list)):
        raise ModelFileError(f"The model's {what} is not a Keras model config (expected a JSON "
                             "object with class_name and config)",
                             f"{path} (" + (f"missing {', '.join(missing)}" if missing else
                                            f"class_name={config['class_name']!r}, config is a "
                                            f"{type(config['config']).__name__}") + ")",
                             RESAVE)
    return config
