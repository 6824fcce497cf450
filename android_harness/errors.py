"""Harness error types, following pipeline.core.errors: one line saying what failed, the value
received and the fix, mapped to an exit code (0 ok, 1 a measurement failed, 2 bad input/usage).
"""

from __future__ import annotations

from pipeline.core.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, QatError

__all__ = ["printable", "HarnessError", "UsageError", "AdbNotFoundError", "AdbError", "DeviceUnavailable",
           "BenchmarkToolError", "AbiMismatchError", "OutputParseError", "MeasurementFailed",
           "InputDataError", "EXIT_BAD_INPUT", "EXIT_GATE_FAILED"]


class HarnessError(QatError):
    """Base class of every error the harness reports to the user."""


class UsageError(HarnessError):
    """Bad command-line usage or an inconsistent option set."""


class InputDataError(HarnessError):
    """The --inputs .npz cannot feed the model."""


class AdbNotFoundError(HarnessError):
    """No adb executable was found."""


class AdbError(HarnessError):
    """An adb command failed for a reason other than the device going away."""


class DeviceUnavailable(HarnessError):
    """The device is offline, unauthorized, not found, or disconnected during a command.

    ``state`` is what ``adb get-state`` / ``adb devices`` reported ('offline', 'unauthorized',
    'not found', ...).
    """

    def __init__(self, what: str, received: object = None, fix: str | None = None,
                 state: str = "unknown"):
        super().__init__(what, received, fix)
        self.state = state


class BenchmarkToolError(HarnessError):
    """benchmark_model (or the benchmark APK) is missing, unusable, or failed to run."""


class AbiMismatchError(BenchmarkToolError):
    """The benchmark_model binary was built for another ABI than the device's."""


class OutputParseError(BenchmarkToolError):
    """benchmark_model printed nothing the parser recognises."""


class MeasurementFailed(HarnessError):
    """One measurement could not be completed; the run goes on and the result says why."""

    exit_code = EXIT_GATE_FAILED


def printable(text: object, keep: str = "\n\t") -> str:
    """``text`` safe for a terminal: every non-printable character (ESC sequences, \\r, NUL,
    bidi overrides, ...) except those in ``keep`` is written as its Python escape (\\x1b).
    Whatever the harness prints that came from adb, a device or benchmark_model goes through
    this: a phone's property or a tool's output must not drive the terminal."""
    text = str(text)
    if all(ch.isprintable() or ch in keep for ch in text):
        return text
    return "".join(ch if ch.isprintable() or ch in keep else repr(ch)[1:-1] for ch in text)
