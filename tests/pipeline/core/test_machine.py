"""What decides the numbers: CPU facts, oneDNN on/off and the variables, as recorded in
manifest.json; and the product default (oneDNN graph rewrites off unless the user chose)."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.core import machine
from tests.conftest import REPO

# TensorFlow's own answer comes from a private module: fine in a test, which checks that
# machine.py's copy of TensorFlow's rule still matches it (the product may not import it).
PROBE = ("import json; from pipeline.core import keras_env, machine; keras_env.load(); "
         "from tensorflow.python.util import _pywrap_util_port as port; "
         "print(json.dumps({**machine.describe(), 'tensorflow_says': port.IsMklEnabled()}))")


def _probe(**env_changes) -> dict:
    """machine.describe() in a fresh process after TensorFlow is loaded (TensorFlow reads the
    variables once per process, so each setting needs its own); None removes a variable."""
    env = {k: v for k, v in os.environ.items()
           if k not in (machine.ONEDNN_VAR, machine.ISA_VAR)}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_onednn_is_off_by_default_and_the_users_choice_wins():
    default = _probe(ONEDNN_MAX_CPU_ISA=None)
    assert default["onednn_graph_rewrites"] is False is default["tensorflow_says"]
    assert default["onednn_decided_by"] == "TF_ENABLE_ONEDNN_OPTS=0"
    assert default["environment"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    x86 = default["machine"] in ("x86_64", "AMD64")
    assert default["onednn_max_cpu_isa"] == ("AVX2" if x86 else "ALL")
    if default["machine"] not in ("x86_64", "AMD64"):
        pytest.skip(f"oneDNN graph rewrites are built for x86-64 only, not "
                    f"{default['machine']}: nothing to turn on")
    chosen = _probe(TF_ENABLE_ONEDNN_OPTS="True", ONEDNN_MAX_CPU_ISA="ALL")
    assert chosen["onednn_graph_rewrites"] is True is chosen["tensorflow_says"]
    assert chosen["onednn_decided_by"] == "TF_ENABLE_ONEDNN_OPTS=True"
    assert chosen["onednn_max_cpu_isa"] == "ALL"


def test_a_value_tensorflow_ignores_gives_its_default_for_this_cpu():
    odd = _probe(TF_ENABLE_ONEDNN_OPTS="yes")  # not 0/1/true/false: TensorFlow warns, ignores
    assert odd["onednn_graph_rewrites"] is odd["tensorflow_says"]
    assert odd["onednn_graph_rewrites"] is machine.onednn_default_for(set(odd["cpu_flags"]))
    assert odd["onednn_decided_by"] == ("tensorflow default for this CPU "
                                        "(TF_ENABLE_ONEDNN_OPTS=yes is not 0/1/true/false)")


def test_the_variable_counts_as_tensorflow_read_it_at_import():
    code = ("import json, os; from pipeline.core import keras_env, machine; keras_env.load(); "
            "os.environ['TF_ENABLE_ONEDNN_OPTS'] = '1'; "  # too late: TensorFlow has read it
            "print(json.dumps([machine.onednn_enabled(), keras_env.onednn_enabled()]))")
    env = {k: v for k, v in os.environ.items() if k != machine.ONEDNN_VAR}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    (on, why), asked = json.loads(out.stdout.strip().splitlines()[-1])
    assert (on, why, asked) == (False, "TF_ENABLE_ONEDNN_OPTS=0", False)


@pytest.mark.parametrize("value, flags, expected", [
    ("0", {"avx512_vnni"}, False), ("FALSE", {"avx512_vnni"}, False),
    ("1", {"avx2"}, True), ("tRuE", {"avx2"}, True),
    ("yes", {"avx2"}, False), ("yes", {"avx512_vnni"}, True), ("", {"avx_vnni"}, True),
    (None, {"avx2"}, False), (None, {"amx_tile"}, True),
])
def test_tensorflows_variable_rule(value, flags, expected):
    assert machine.onednn_rule(value, flags, "x86_64") is expected


@pytest.mark.parametrize("flags, arch, expected", [
    ({"avx2", "fma"}, "x86_64", False),                      # the AVX2 machines
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", True),    # Zen 4, Cascade Lake and later
    ({"avx2", "avx_vnni"}, "x86_64", True),                  # Alder Lake
    ({"avx512f", "avx512_bf16"}, "x86_64", True),
    ({"amx_tile", "amx_int8"}, "x86_64", True),              # Sapphire Rapids
    ({"asimd", "asimddp", "i8mm"}, "aarch64", False),        # arm64: only when asked for
])
def test_tensorflows_default_rule(flags, arch, expected):
    assert machine.onednn_default_for(flags, arch) is expected


def test_recorded_environment_keeps_steering_variables_and_drops_secrets(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("TF_DETERMINISTIC_OPS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("TF_VAR_db_password", "hunter2")     # Terraform's prefix is TF_ too
    monkeypatch.setenv("TF_TOKEN_app_example_com", "abc")
    monkeypatch.setenv("TF_SECRET_KEY", "x")
    env = machine.recorded_environment()
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["TF_DETERMINISTIC_OPS"] == "1"
    assert env["OMP_NUM_THREADS"] == "2"
    assert not {"TF_VAR_db_password", "TF_TOKEN_app_example_com", "TF_SECRET_KEY"} & set(env)
    assert "hunter2" not in json.dumps(machine.describe())


def test_summary_names_cpu_isa_and_onednn_state():
    info = {"cpu": "AMD EPYC 9R14", "machine": "x86_64", "cores": 2,
            "cpu_flags": ["avx2", "avx512_vnni", "avx512f"], "onednn_graph_rewrites": False,
            "onednn_decided_by": "TF_ENABLE_ONEDNN_OPTS=0", "onednn_max_cpu_isa": "AVX2"}
    assert machine.summary(info) == ("AMD EPYC 9R14 (x86_64, 2 cores, avx512_vnni), oneDNN "
                                     "graph rewrites off (TF_ENABLE_ONEDNN_OPTS=0), oneDNN "
                                     "kernels up to AVX2")
