"""The one module that imports TensorFlow, Keras (tf_keras) and tfmot.

tensorflow-model-optimization 0.8 only works with Keras 2, shipped as ``tf_keras``; TensorFlow
picks Keras 2 for ``tf.keras`` only if ``TF_USE_LEGACY_KERAS=1`` is set *before* TensorFlow is
first imported (TF 2.16 release notes; tfmot issues #1119, #1270). ``tf.keras`` is resolved on
first access and then fixed for the process, so we set the variable at import time of this
module and check the result instead of trusting it.

Usage: ``from pipeline.core import keras_env; env = keras_env.load(); env.tf, env.keras, env.tfmot``.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import platform
import re
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType

from pipeline.core import machine
from pipeline.core.errors import KerasEnvError, ModelFileError
from pipeline.core.native import quiet_native_output

_TRUTHY = {"1", "true", "yes", "on"}


def _prepare_environment() -> None:
    """Set the variables TensorFlow reads; respect an explicit user choice (load() reports it).

    Even if TensorFlow is already imported, setting the variable still helps as long as
    nothing has touched ``tf.keras`` yet (it is resolved lazily); load() checks the outcome."""
    if os.environ.get("TF_USE_LEGACY_KERAS") is None:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # TensorFlow's C++ log lines drown the progress output (tf.data prints spurious E-level
    # "NodeDef mentions attribute use_unbounded_threadpool" lines with TF 2.21); failures
    # still surface as Python exceptions. Set TF_CPP_MIN_LOG_LEVEL=0 to see them all.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Reproducible float numbers on every x86-64 CPU, unless the user chose otherwise (both
    # are read once, when TensorFlow loads oneDNN, so only before it is imported):
    # - TensorFlow turns its oneDNN graph rewrites on by default only on AVX512_VNNI /
    #   AVX512_BF16 / AVX_VNNI / AMX CPUs; they change training (other fusions and summation
    #   orders; a NaN into a fused op becomes 0). TF_ENABLE_ONEDNN_OPTS=1 turns them on.
    # - Even with them off, TensorFlow's matrix products run oneDNN's sgemm, which picks its
    #   kernels by the CPU's instruction set: AVX-512 and AVX2 sum in other orders, and the
    #   same seeded demo trained to 99.11 % on an AVX-512 CPU and 98.89 % on an AVX2 one.
    #   Capped at AVX2 (every x86-64 CPU of the last decade has it) both give 98.89 %;
    #   ONEDNN_MAX_CPU_ISA=ALL lifts the cap for speed.
    # pipeline/core/machine.py records what was in force in manifest.json.
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        if platform.machine().lower() in ("x86_64", "amd64"):
            os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")


_prepare_environment()


@dataclass(frozen=True)
class KerasEnv:
    tf: ModuleType
    keras: ModuleType  # tf_keras
    tfmot: ModuleType
    versions: dict


_ENV: KerasEnv | None = None


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


# The training stack is the `qat` extra: a core install (numpy + ai-edge-litert) runs
# `qat inspect`, `qat verify --reference` and android-harness, and every command that needs
# TensorFlow says how to add it.
EXTRA_FIX = "Install the training stack: pip install 'qat-deploy[qat]' (in a checkout: make venv)"


def _import(module: str, label: str) -> ModuleType:
    """Import ``module``; a failure is a KerasEnvError naming the extra, not a traceback."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise KerasEnvError(f"{label} cannot be imported (a core install has no training stack)",
                            f"import {module}: {exc}", EXTRA_FIX) from exc


def _check_versions() -> tuple[str, str]:
    """(tensorflow, tf-keras) versions; KerasEnvError with the fix if Keras 2 cannot be used."""
    legacy = os.environ.get("TF_USE_LEGACY_KERAS", "")
    if legacy.strip().lower() not in _TRUTHY:
        raise KerasEnvError(
            "QAT needs Keras 2 (tf_keras) but TF_USE_LEGACY_KERAS is not enabled",
            f"TF_USE_LEGACY_KERAS={legacy!r}",
            "Unset it or set TF_USE_LEGACY_KERAS=1 before starting Python",
        )
    tf_version = _version("tensorflow") or _version("tensorflow-cpu")
    if tf_version is None:
        raise KerasEnvError("TensorFlow is not installed (core install)",
                            "no 'tensorflow' distribution", EXTRA_FIX)
    tfk_version = _version("tf-keras") or _version("tf_keras")
    if tfk_version is None:
        raise KerasEnvError(
            "tf-keras (Keras 2) is not installed; tfmot cannot run on Keras 3",
            f"tensorflow=={tf_version}",
            f"pip install 'qat-deploy[qat]' (or 'tf-keras=={_minor(tf_version)}.*')",
        )
    if _minor(tfk_version) != _minor(tf_version):
        raise KerasEnvError(
            "tf-keras and TensorFlow minor versions differ",
            f"tensorflow=={tf_version}, tf-keras=={tfk_version}",
            f"pip install 'tf-keras=={_minor(tf_version)}.*'",
        )
    if _version("tensorflow-model-optimization") is None:
        raise KerasEnvError(
            "tensorflow-model-optimization is not installed", "no such distribution",
            "pip install 'qat-deploy[qat]' (or 'tensorflow-model-optimization==0.8.*')")
    return tf_version, tfk_version


def once(define):
    """A function returning ``define(load())``, computed on its first call and kept: layer
    classes that need tf_keras, defined (and registered with Keras) once it is loaded."""
    made: list = []

    def get():
        if not made:
            made.append(define(load()))
        return made[0]
    return get


def load() -> KerasEnv:
    """Import TensorFlow, tf_keras and tfmot once; raise KerasEnvError with the fix if unusable."""
    global _ENV
    if _ENV is not None:
        return _ENV

    tf_version, tfk_version = _check_versions()
    machine.note_tensorflow_import()
    # quiet_native_output: TensorFlow's C++ prints "All log messages before
    # absl::InitializeLog()" and the CUDA-stub notice at import whatever TF_CPP_MIN_LOG_LEVEL
    # says; the text is replayed if the import fails.
    with warnings.catch_warnings(), quiet_native_output():
        warnings.simplefilter("ignore")
        tf = _import("tensorflow", "TensorFlow")
        keras = _import("tf_keras", "tf-keras (Keras 2)")
        tf_keras_name = getattr(tf.keras, "__name__", "")
        if not tf_keras_name.startswith("tf_keras"):
            raise KerasEnvError(
                "tf.keras resolved to Keras 3: TensorFlow was imported and tf.keras used before "
                "TF_USE_LEGACY_KERAS=1 was set",
                f"tf.keras={tf_keras_name or tf.keras!r}",
                "Import pipeline before TensorFlow, or export TF_USE_LEGACY_KERAS=1",
            )
        tfmot = _import("tensorflow_model_optimization", "tensorflow-model-optimization")
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)

    _ENV = KerasEnv(
        tf=tf,
        keras=keras,
        tfmot=tfmot,
        versions={
            "tensorflow": tf_version,
            "tf_keras": tfk_version,
            "tensorflow_model_optimization": _version("tensorflow-model-optimization"),
        },
    )
    return _ENV


def saved_metadata_proto():
    """An empty ``SavedMetadata`` message: the format of a tf_keras SavedModel's
    keras_metadata.pb (one JSON metadata string per saved layer), to parse it as data.
    ``tf_keras.protobuf`` is where tf_keras ships its generated protos (outside ``tf_keras.src``,
    the package's private implementation)."""
    load()
    saved_metadata_pb2 = importlib.import_module("tf_keras.protobuf.saved_metadata_pb2")
    return saved_metadata_pb2.SavedMetadata()


def onednn_enabled() -> bool | None:
    """Whether the loaded TensorFlow runs its oneDNN graph rewrites (None: not loaded).
    TensorFlow has no public API for it: machine.py applies TensorFlow's own rule."""
    if "tensorflow" not in sys.modules:
        return None
    return machine.onednn_enabled()[0]


def call_in_safe_mode(fn, safe: bool):
    """``fn()`` with tf_keras' safe mode set to ``safe`` for every deserialization inside it.

    Safe mode refuses Python bytecode (Lambda layers, RNN cell wrappers' lambdas) but
    ``load_model(safe_mode=...)`` only passes it on for the .keras format; .h5 and SavedModel
    loading then finds it unset and runs the bytecode. The public way to set it for a call tree
    is ``tf_keras.saving.deserialize_keras_object(config, safe_mode=...)``, which holds it while
    the object's ``from_config`` runs: ``fn`` runs as the ``from_config`` of a local class."""
    env = load()
    result = []

    class _SafeModeCall:
        @classmethod
        def from_config(cls, config):
            result.append(fn())
            return cls()

    name = "_QatSafeModeCall"
    env.keras.saving.deserialize_keras_object(
        {"class_name": name, "config": {}, "module": None, "registered_name": name},
        custom_objects={name: _SafeModeCall}, safe_mode=bool(safe))
    return result[0]


def set_seed(seed: int) -> None:
    """The one place seeds are applied (Python, NumPy, TensorFlow) with deterministic ops."""
    env = load()
    env.keras.utils.set_random_seed(int(seed))
    try:
        env.tf.config.experimental.enable_op_determinism()
    except Exception:  # older TF or already-initialised runtime: seeds still apply
        pass


# At most this many probe layers per name (each costs ~0.2 ms): the counter of a model's most
# crowded automatic name (conv2d_N) is moved this far; a wall of names further than that means
# a hostile or generated file.
MAX_NAME_PROBES = 20_000
_AUTO_NAME = re.compile(r"[a-z][a-z0-9_]*")


def reserve_layer_names(names) -> None:
    """Make tf_keras' automatic layer names skip ``names`` (layer names already in a model).

    tf_keras names an unnamed layer from a per-graph counter of the snake_case class name
    (``conv2d``, ``conv2d_1``, ...); a layer created with an explicit name does not advance it.
    tfmot's layout transforms create unnamed layers (SeparableConvQuantize: a DepthwiseConv2D
    and a Conv2D per SeparableConv2D) and rebuild the model by layer name, so in a process that
    never auto-named a ``conv2d`` the new pointwise conv is called ``conv2d`` too when the model
    already has one (a Keras 3 Xception translated from its config, a Keras 2 model loaded from
    a file): two config entries share a name and ``Model.from_config`` loops forever or fails.

    tf_keras has no public call that sets the counter, so it is advanced the public way: by
    creating unnamed layers of a class called ``base`` until the next ``len(names) * 2 + 64``
    automatic names (more than tfmot creates for this model) are free."""
    env = load()
    names = list(names)
    taken: dict[str, set[int]] = {}
    for name in names:
        m = re.fullmatch(r"(.+?)(?:_(\d+))?", str(name))
        if m and _AUTO_NAME.fullmatch(m.group(1)):  # tf_keras never generates other names
            taken.setdefault(m.group(1), set()).add(int(m.group(2) or 0))
    reach = 2 * len(names) + 64
    for base, suffixes in sorted(taken.items()):
        _advance_name_counter(env.keras.layers.Layer, base, suffixes, reach)


def _advance_name_counter(layer_cls, base: str, suffixes: set[int], reach: int) -> None:
    probe = type(base, (layer_cls,), {})  # its instances are named base, base_1, base_2, ...

    def next_number() -> int:
        m = re.fullmatch(re.escape(base) + r"(?:_(\d+))?", probe().name)
        return int(m.group(1) or 0)

    current = target = next_number()  # the number this probe took; the next auto name is +1
    for s in sorted(suffixes):
        if s > target + reach:
            break
        target = max(target, s)
    if target - current > MAX_NAME_PROBES:
        raise ModelFileError(
            "The model's layer names occupy too many of tf_keras' automatic names",
            f"{base}_{current + 1} ... {base}_{target}",
            "Rename those layers: tfmot names the layers it adds from the same counter")
    while current < target:
        current = next_number()


def load_keras3() -> ModuleType:
    """Import Keras 3 (the ``keras`` package) next to tf_keras, to read Keras 3 models.

    Keras 3 and tf_keras are separate packages with separate import paths: ``import keras`` is
    Keras 3 (a TensorFlow >= 2.16 dependency) whatever TF_USE_LEGACY_KERAS says, the variable
    only picks what ``tf.keras`` means (TF 2.16 release notes). load() runs first so that
    ``tf.keras`` is already fixed to tf_keras when Keras 3 imports TensorFlow."""
    load()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keras3 = importlib.import_module("keras")
    except ImportError as exc:
        raise KerasEnvError("Keras 3 is needed to read a Keras 3 model but cannot be imported",
                            f"import keras: {exc}", "pip install 'keras>=3'")
    version = str(getattr(keras3, "__version__", ""))
    if not version.startswith("3."):
        raise KerasEnvError("Keras 3 is needed to read a Keras 3 model but `import keras` gave "
                            "another version", f"keras=={version or '?'}",
                            "pip install 'keras>=3' (it installs next to tf-keras)")
    return keras3
