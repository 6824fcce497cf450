"""The real flow on a real phone: runs only with ANDROID_SERIAL and BENCHMARK_MODEL_PATH set.

    ANDROID_SERIAL=R58M1234 BENCHMARK_MODEL_PATH=~/android_aarch64_benchmark_model \
        .venv/bin/pytest -m device tests/android_harness
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

NEEDS = [v for v in ("ANDROID_SERIAL", "BENCHMARK_MODEL_PATH") if not os.environ.get(v)]

pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(bool(NEEDS), reason=f"needs a real device: set {' and '.join(NEEDS)} "
                       "(and have adb on PATH)"),
]


def test_bench_on_the_attached_phone(tiny_models, tmp_path, capsys):
    from android_harness import cli

    if shutil.which("adb") is None and not os.environ.get("ADB"):
        pytest.skip("adb is not installed")
    out = tmp_path / "out"
    code = cli.main(cli.parse_args([
        "bench", str(tiny_models["float32"]), str(tiny_models["qat_int8"]),
        "--serial", os.environ["ANDROID_SERIAL"], "--threads", "1", "--repeats", "2",
        "--cooldown", "1", "--min-seconds", "0.5", "--out", str(out)]))
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    doc = json.loads((out / "results.json").read_text())
    target = doc["targets"][0]
    assert target["status"] == "ok" and target["conditions_start"]["abi"]
    assert all(r["status"] == "ok" and r["p50_us"] > 0 for r in doc["results"])
    i8 = next(r for r in doc["results"] if r["model"] == "qat_int8")
    assert i8["ratio_to_baseline"] is not None and "x float32" in stdout
