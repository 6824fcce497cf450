"""Fixtures for the android_harness tests: tiny real .tflite models and the fake adb device.

The models are built once per session with TensorFlow (tests may import it; the harness never
does). The device side runs against tests/fakes/adb, a documented test double of adb + a phone
(see tests/fakes/README.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"
SEED = 0

_ELF = {"arm64-v8a": (183, 2), "armeabi-v7a": (40, 1), "x86_64": (62, 2), "x86": (3, 1)}


def write_fake_binary(path: Path, abi: str = "arm64-v8a") -> Path:
    """An ELF header for ``abi`` followed by the marker the fake device executes as
    benchmark_model (tests/fakes/fake_benchmark_model.py)."""
    machine, cls = _ELF[abi]
    h = bytearray(64)
    h[:4], h[4], h[5], h[6] = b"\x7fELF", cls, 1, 1
    h[16:18], h[18:20] = (3).to_bytes(2, "little"), machine.to_bytes(2, "little")
    path.write_bytes(bytes(h) + b"\nFAKE-TFLITE-BENCHMARK-MODEL\n")
    path.chmod(0o755)
    return path


def _build_models(out: Path) -> dict[str, Path]:
    from pipeline.core import keras_env

    env = keras_env.load()
    tf, keras = env.tf, env.keras
    keras.utils.set_random_seed(SEED)
    inp = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    paths = {"float32": out / "float32.tflite", "qat_int8": out / "qat_int8.tflite"}
    paths["float32"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    rng = np.random.default_rng(SEED)

    def representative():
        for _ in range(16):
            yield [rng.uniform(0, 1, (1, 8, 8, 1)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    # Named qat_int8 so the ratio-to-float32 logic sees the pipeline's variant names; it is a
    # post-training int8 model, which is all a latency test needs.
    paths["qat_int8"].write_bytes(conv.convert())
    return paths


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """float32.tflite and qat_int8.tflite of one tiny CNN on 8x8x1 inputs."""
    return _build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def inputs_npz(tmp_path_factory) -> Path:
    """Float inputs for the tiny models (20 samples of 8x8x1 in [0, 1))."""
    rng = np.random.default_rng(SEED)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_test=rng.uniform(0, 1, (20, 8, 8, 1)).astype(np.float32),
             y_test=rng.integers(0, 10, 20))
    return path


class FakeDevices:
    """Handle on the fake adb: where its devices keep their files, what it was asked to do."""

    def __init__(self, root: Path, adb: Path, log: Path, monkeypatch):
        self.root, self.adb, self.log_path, self._mp = root, adb, log, monkeypatch

    def set(self, **env: str) -> None:
        for k, v in env.items():
            self._mp.setenv(k, str(v))

    def fs(self, serial: str = "FAKE0001") -> Path:
        return self.root / serial / "fs"

    def workdirs(self, serial: str = "FAKE0001") -> list[Path]:
        base = self.fs(serial) / "data" / "local" / "tmp" / "android_harness"
        return sorted(p for p in base.iterdir()) if base.is_dir() else []

    def calls(self) -> list[list[str]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line)["argv"] for line in self.log_path.read_text().splitlines()]

    def commands(self, verb: str) -> list[list[str]]:
        """adb invocations whose command (after -s SERIAL) is ``verb``."""
        out = []
        for argv in self.calls():
            args = argv[2:] if argv[:1] == ["-s"] else argv
            if args[:1] == [verb]:
                out.append(args)
        return out


@pytest.fixture
def fake_devices(tmp_path, monkeypatch) -> FakeDevices:
    root = tmp_path / "fake-adb"
    root.mkdir()
    # A launcher with this interpreter and -S: the fake is stdlib-only and is started dozens
    # of times per run, so skipping site-packages keeps the suite fast.
    adb = tmp_path / "bin" / "adb"
    adb.parent.mkdir()
    adb.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{FAKES / "adb"}" "$@"\n')
    adb.chmod(0o755)
    log = tmp_path / "adb-calls.jsonl"
    for var in list(os.environ):
        if var.startswith(("FAKE_ADB_", "FAKE_BM_")) or var in ("ANDROID_SERIAL",
                                                                 "BENCHMARK_MODEL_PATH"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    return FakeDevices(root, adb, log, monkeypatch)


@pytest.fixture
def make_binary(tmp_path):
    """make_binary(abi) -> path of a fake benchmark_model built 'for' that ABI."""
    return lambda abi="arm64-v8a": write_fake_binary(tmp_path / f"benchmark_model_{abi}", abi)


@pytest.fixture
def fake_binary(make_binary) -> Path:
    return make_binary("arm64-v8a")


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from android_harness import cli

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(cli.parse_args([str(a) for a in argv]))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def fast() -> list[str]:
    """Protocol flags that keep a run short (the fake device prints, it does not sleep)."""
    return ["--cooldown", "0", "--min-seconds", "0.01", "--warmup-seconds", "0", "-q"]
