"""What decides the numbers on this machine: CPU, its vector extensions, oneDNN, the variables.

TensorFlow 2.21 turns its oneDNN graph rewrites on by default only on x86 CPUs with
AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (``IsMklEnabled()`` in tensorflow/core/util/util.cc);
``TF_ENABLE_ONEDNN_OPTS`` overrides that either way. The rewrites fuse ops differently (a NaN
input of a fused op becomes 0, sums are ordered differently: ~3e-7 apart), so the same seeded
training gives other float numbers on such CPUs. Independently, TensorFlow's matrix products
run oneDNN's sgemm, whose kernels follow the CPU's instruction set (``ONEDNN_MAX_CPU_ISA``
caps it). This project turns the rewrites off and caps the kernels at AVX2 unless the user set
the variables (``keras_env``), and records here what was in force, for ``manifest.json``.

No TensorFlow import here: ``describe`` reads /proc/cpuinfo and the environment (as TensorFlow
read it when it loaded, if it did).
"""

from __future__ import annotations

import os
import platform
import sys

ONEDNN_VAR = "TF_ENABLE_ONEDNN_OPTS"
ISA_VAR = "ONEDNN_MAX_CPU_ISA"
# The CPU features TensorFlow's default looks at, and the others that change kernel choice.
ONEDNN_DEFAULT_ON_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
                           "amx_int8")
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx_vnni", "avx512_fp16", "amx_tile",
                "amx_bf16", "amx_int8", "asimd", "asimddp", "sve", "i8mm", "bf16")
ENV_PREFIXES = ("TF_", "ONEDNN_", "DNNL_", "OMP_", "KMP_", "XNNPACK_")
# TF_ is also Terraform's prefix (TF_VAR_*, TF_TOKEN_* hold secrets): never recorded.
_ENV_SKIP = ("TF_VAR_", "TF_TOKEN_", "TF_CLI_", "TF_LOG", "TF_WORKSPACE", "TF_DATA_DIR",
             "TF_IN_AUTOMATION", "TF_INPUT", "TF_REGISTRY_", "TF_PLUGIN_", "TF_APPEND_",
             "TF_IGNORE", "TF_STATE")
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "KEY")


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, feature flags) from /proc/cpuinfo; platform's answer elsewhere."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def onednn_default_for(flags: set[str], machine: str | None = None) -> bool:
    """TensorFlow's default for a CPU with these flags (no variable set)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return False  # aarch64 builds of TF 2.21: oneDNN only with the variable set
    return any(f in flags for f in ONEDNN_DEFAULT_ON_FLAGS)


_UNKNOWN = object()
_SEEN_BY_TENSORFLOW: object = _UNKNOWN  # ONEDNN_VAR as TensorFlow read it (None: unset)


def note_tensorflow_import() -> None:
    """Called right before TensorFlow is first imported (keras_env.load): TensorFlow reads
    ONEDNN_VAR once, as it loads, so later changes of the variable do not count."""
    global _SEEN_BY_TENSORFLOW
    if "tensorflow" not in sys.modules:
        _SEEN_BY_TENSORFLOW = os.environ.get(ONEDNN_VAR)


def onednn_rule(value: str | None, flags: set[str], machine: str | None = None) -> bool:
    """TensorFlow's IsMklEnabled() in its oneDNN builds (tensorflow/core/util/util.cc), which
    has no public API: the variable if it reads 0/false/1/true (any case; TensorFlow ignores
    anything else with a warning), else the default for this CPU. test_machine.py checks the
    rule against TensorFlow's own answer on the machine running the tests."""
    word = (value or "").lower()
    if value is not None and word in ("0", "false", "1", "true"):
        return word in ("1", "true")
    return onednn_default_for(flags, machine)


def onednn_enabled() -> tuple[bool, str]:
    """(on?, what decided it): the variable as TensorFlow saw it when it loaded (as it is now,
    if TensorFlow is not loaded or was imported before the pipeline), by TensorFlow's rule."""
    value = os.environ.get(ONEDNN_VAR)
    if "tensorflow" in sys.modules and _SEEN_BY_TENSORFLOW is not _UNKNOWN:
        value = _SEEN_BY_TENSORFLOW
    if value is None:
        why = "tensorflow default for this CPU"
    elif value.lower() in ("0", "false", "1", "true"):
        why = f"{ONEDNN_VAR}={value}"
    else:
        why = f"tensorflow default for this CPU ({ONEDNN_VAR}={value} is not 0/1/true/false)"
    _, flags = _cpuinfo()
    return onednn_rule(value, flags), why


def recorded_environment() -> dict:
    """The variables that steer TensorFlow, oneDNN, OpenMP and XNNPACK (none that may hold a
    secret)."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith(ENV_PREFIXES) and not k.startswith(_ENV_SKIP)
            and not any(w in k.upper() for w in _SECRET_WORDS)}


def describe() -> dict:
    """The facts that decide the float numbers of a run, as JSON-ready values."""
    model, flags = _cpuinfo()
    on, why = onednn_enabled()
    return {
        "cpu": model,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": sorted(f for f in VECTOR_FLAGS if f in flags),
        "onednn_graph_rewrites": on,
        "onednn_decided_by": why,
        # the instruction set oneDNN's kernels (sgemm included) may use: ALL = the CPU's best
        "onednn_max_cpu_isa": os.environ.get(ISA_VAR, "ALL"),
        "environment": recorded_environment(),
    }


def summary(info: dict | None = None) -> str:
    """One line for logs and report.md: CPU, its top vector extension, oneDNN on/off."""
    info = info or describe()
    flags = info["cpu_flags"]
    top = next((f for f in ("amx_int8", "avx512_vnni", "avx_vnni", "avx512f", "avx2", "asimd")
                if f in flags), "")
    return (f"{info['cpu']} ({info['machine']}, {info['cores']} cores"
            + (f", {top}" if top else "") + "), oneDNN graph rewrites "
            + ("on" if info["onednn_graph_rewrites"] else "off")
            + f" ({info['onednn_decided_by']}), oneDNN kernels up to "
            + info.get("onednn_max_cpu_isa", "ALL"))
