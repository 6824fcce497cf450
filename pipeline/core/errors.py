"""Error types and their exit codes.

Every error the user can cause is one of these. Each message is one line that says what failed,
the value received and how to fix it (pattern from Keras and ai-edge-quantizer), e.g.

    Input data has shape (N, 28, 28) but the model expects (N, 8, 8, 1). Received:
    data=train.npz:x_train. Reshape the array or pass a matching model.

Exit codes: 0 ok, 1 a quality gate failed (the report says which), 2 bad input or usage.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3        # a bug: the message says so; --debug prints the traceback
EXIT_INTERRUPTED = 130   # Ctrl-C / SIGTERM, as shells report SIGINT
EXIT_BROKEN_PIPE = 141   # the reader of stdout left (`qat inspect x | head`), as for SIGPIPE


def first_line(exc: BaseException, limit: int | None = 200, empty: str | None = None) -> str:
    """The first line of an exception's message, at most ``limit`` characters, for one-line
    errors; an empty message gives ``empty`` (default: the exception's type name)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if empty is None else empty
    return text.splitlines()[0].strip()[:limit]


class QatError(Exception):
    """Base class: a failure with a user-facing one-line message and an exit code."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, what: str, received: object = None, fix: str | None = None):
        self.what = what.rstrip(".")
        self.received = received
        self.fix = fix
        parts = [self.what + "."]
        if received is not None:
            parts.append(f"Received: {received}.")
        if fix:
            parts.append(fix.rstrip(".") + ".")
        # One line, always: newlines from nested messages would break the contract.
        super().__init__(" ".join(parts).replace("\r\n", " ").replace("\n", " ")
                         .replace("\r", " "))


class UsageError(QatError):
    """Bad command-line usage or an inconsistent option set."""


class ConfigError(QatError):
    """A recipe/config value is unknown or invalid."""


class KerasEnvError(QatError):
    """The installed TensorFlow/Keras/tfmot combination cannot run QAT."""


class ModelFileError(QatError):
    """A Keras model file or a .tflite file cannot be used (missing, malformed, unsafe)."""


class DataError(QatError):
    """The dataset is missing, malformed or does not fit the model."""


class TrainingError(QatError):
    """QAT fine-tuning failed (e.g. the loss became NaN)."""


class ConversionError(QatError):
    """The TFLite converter failed or produced a model that breaks the requested contract."""


class OutputError(QatError):
    """The artifacts cannot be written: disk full, quota, read-only filesystem, permission."""

