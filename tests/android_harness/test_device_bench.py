"""``android-harness bench`` end to end against the fake adb device (tests/fakes).

The harness runs exactly as with a phone: it lists devices, reads conditions, checks the ABI,
pushes files by hash, runs benchmark_model (the fake's emulator prints the real formats),
parses, retries after a disconnect, and cleans the device up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def load(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def result(doc: dict, model: str, config: str = "t1/xnnpack", target: str = "FAKE0001"):
    return next(r for r in doc["results"]
                if (r["target"], r["model"], r["config_key"]) == (target, model, config))


@pytest.fixture
def hostile_models(tiny_models, tmp_path) -> list[Path]:
    """The tiny models under names a device shell would mangle if quoting were wrong."""
    d = tmp_path / "art ifacts; rm -rf $HOME"
    d.mkdir()
    out = [d / "float32.tflite", d / "qat_int8.tflite"]
    shutil.copy(tiny_models["float32"], out[0])
    shutil.copy(tiny_models["qat_int8"], out[1])
    return out


def test_bench_end_to_end(fake_devices, fake_binary, tiny_models, run_cli, fast, tmp_path):
    fake_devices.set(FAKE_BM_LATENCY_US="float32=1000,qat_int8=480")
    out = tmp_path / "out"
    code, stdout, _ = run_cli("bench", tiny_models["float32"], tiny_models["qat_int8"],
                              "--adb", fake_devices.adb, "--benchmark-model", fake_binary,
                              "--threads", "1,4", "--repeats", "3", "--out", out, *fast)
    assert code == 0
    doc = load(out)
    assert doc["schema_version"] == 1 and doc["command"] == "bench"
    target = doc["targets"][0]
    assert target["status"] == "ok" and target["tool"]["abi"] == "arm64-v8a"
    cond = target["conditions_start"]
    for key in ("manufacturer", "model", "soc", "android_release", "sdk", "abi", "cores",
                "cpus", "governors", "battery", "thermal_service", "thermal"):
        assert cond[key] not in (None, [], {}), key
    assert len(doc["results"]) == 4
    for r in doc["results"]:
        assert r["status"] == "ok" and r["repeats_ok"] == 3
        assert r["model_sha256"] in {m["sha256"] for m in doc["models"]}
        assert r["median_source"] == "benchmark_model median of each repeat"
        assert r["ci95_median_us"]["low"] <= r["p50_us"] <= r["ci95_median_us"]["high"]
        assert r["stability"]["verdict"] == "stable"
        for m in r["repeat_measurements"]:
            assert m["thermal_before"] and m["thermal_after"] and m["count"] >= 50
            assert Path(m["raw_log"]).is_file()
    # The emulator was configured for 1000 us vs 480 us: the ratio must come out at 0.48
    # (its latencies have a 3 % spread; the medians of >= 50 runs land within ~1 %).
    for cfg in ("t1/xnnpack", "t4/xnnpack"):
        assert result(doc, "qat_int8", cfg)["ratio_to_baseline"] == pytest.approx(0.48, abs=0.015)
        assert result(doc, "float32", cfg)["ratio_to_baseline"] == 1.0
    assert "| FAKE0001 | qat_int8 | t1/xnnpack | 3/3 |" in stdout and "x float32" in stdout
    assert (out / "table.md").read_text() == stdout
    assert (out / "table.csv").read_text().startswith("target,model,config,status")
    # Each repeat was a separate benchmark_model run, in a shuffled order.
    runs = [a for a in fake_devices.commands("shell") if "--graph=" in a[-1]]
    assert len(runs) == 12
    order = [m["model"] + m["config"] for r in doc["results"] for m in r["repeat_measurements"]]
    assert len(set(order)) == 4
    assert fake_devices.workdirs() == []  # cleaned up


def test_hostile_file_names_and_push_once(fake_devices, fake_binary, hostile_models, run_cli,
                                          fast, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("bench", *hostile_models, "--adb", fake_devices.adb,
                           "--benchmark-model", fake_binary, "--repeats", "2", "--out", out,
                           "--keep-device-files", *fast)
    assert code == 0, err
    doc = load(out)
    assert {r["model"] for r in doc["results"]} == {"float32", "qat_int8"}
    assert all(r["status"] == "ok" for r in doc["results"])
    # binary + 2 models, each pushed once for 4 runs
    assert len(fake_devices.commands("push")) == 3
    (work,) = fake_devices.workdirs()
    pushed = sorted(p.name for p in (work / "models").rglob("*.tflite"))
    assert pushed == ["float32.tflite", "qat_int8.tflite"]
    assert not list(fake_devices.fs().rglob("pwned*"))


@pytest.mark.parametrize("fmt, source, has_ci", [
    ("modern", "benchmark_model median of each repeat", True),
    ("classic", "benchmark_model mean of each repeat (this build prints no percentiles)", True),
    ("bare", "benchmark_model mean of each repeat (this build prints no percentiles)", True),
    ("legacy", "benchmark_model mean of each repeat (this build prints no percentiles)", True),
])
def test_output_format_variants(fake_devices, fake_binary, tiny_models, run_cli, fast, tmp_path,
                                fmt, source, has_ci):
    fake_devices.set(FAKE_BM_FORMAT=fmt)
    out = tmp_path / "out"
    code, _, err = run_cli("bench", tiny_models["float32"], "--adb", fake_devices.adb,
                           "--benchmark-model", fake_binary, "--repeats", "3", "--out", out, *fast)
    assert code == 0, err
    r = result(load(out), "float32")
    assert r["status"] == "ok" and r["median_source"] == source
    assert (r["ci95_median_us"] is not None) == has_ci
    logs = [Path(m["raw_log"]).read_text() for m in r["repeat_measurements"]]
    assert all(("INFO: " in t) == (fmt in ("modern", "classic")) for t in logs)


def test_unparseable_output_fails_the_result_and_quotes_it(fake_devices, fake_binary,
                                                           tiny_models, run_cli, fast, tmp_path):
    fake_devices.set(FAKE_BM_FORMAT="garbage")
    out = tmp_path / "out"
    code, stdout, _ = run_cli("bench", tiny_models["float32"], "--adb", fake_devices.adb,
                              "--benchmark-model", fake_binary, "--repeats", "1", "--out", out,
                              *fast)
    assert code == 1
    r = result(load(out), "float32")
    assert r["status"] == "failed"
    assert "could not be parsed" in r["errors"][0]
    assert "LiteRT bench 9.9 | model ok | latency_ms: 1.23 +- 0.04" in r["errors"][0]
    assert "Failures:" in stdout


@pytest.mark.parametrize("state, words", [("offline", "is offline"),
                                          ("unauthorized", "Allow USB debugging")])
def test_unusable_device_is_reported_in_one_line(fake_devices, fake_binary, tiny_models, run_cli,
                                                 fast, state, words, tmp_path):
    fake_devices.set(FAKE_ADB_DEVICES=f"FAKE0001:{state}")
    code, _, err = run_cli("bench", tiny_models["float32"], "--adb", fake_devices.adb,
                           "--benchmark-model", fake_binary, "--serial", "FAKE0001",
                           "--out", tmp_path / "out", *fast)
    assert code == 2
    assert err.startswith("error: Device FAKE0001 is") and words in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_all_devices_concurrently_with_one_unauthorized(fake_devices, fake_binary, tiny_models,
                                                        run_cli, fast, tmp_path):
    fake_devices.set(FAKE_ADB_DEVICES="PHONE_A:device,PHONE_B:device,PHONE_C:unauthorized")
    out = tmp_path / "out"
    code, stdout, _ = run_cli("bench", tiny_models["float32"], tiny_models["qat_int8"], "--all",
                              "--adb", fake_devices.adb, "--benchmark-model", fake_binary,
                              "--repeats", "2", "--out", out, *fast)
    assert code == 1  # one device could not be used; the table says which
    doc = load(out)
    status = {t["target"]: t["status"] for t in doc["targets"]}
    assert status == {"PHONE_A": "ok", "PHONE_B": "ok", "PHONE_C": "failed"}
    assert "unauthorized" in next(t["error"] for t in doc["targets"] if t["target"] == "PHONE_C")
    for phone in ("PHONE_A", "PHONE_B"):
        assert result(doc, "qat_int8", target=phone)["status"] == "ok"
        assert result(doc, "qat_int8", target=phone)["ratio_to_baseline"] is not None
    assert "PHONE_C`: " in stdout and "FAILED" in stdout
    # the two phones ran at the same time (one worker each)
    a = [t for t in doc["targets"] if t["target"] == "PHONE_A"][0]
    b = [t for t in doc["targets"] if t["target"] == "PHONE_B"][0]
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]


def test_disconnect_mid_run_then_reconnect(fake_devices, fake_binary, tiny_models, run_cli, fast,
                                           tmp_path):
    fake_devices.set(FAKE_ADB_DISCONNECT_ON_RUN="2", FAKE_ADB_RECONNECT="1")
    out = tmp_path / "out"
    code, _, err = run_cli("bench", tiny_models["float32"], tiny_models["qat_int8"],
                           "--adb", fake_devices.adb, "--benchmark-model", fake_binary,
                           "--repeats", "2", "--reconnect-timeout", "10", "--out", out, *fast)
    assert code == 0, err
    ms = [m for r in load(out)["results"] for m in r["repeat_measurements"]]
    assert sorted(m["attempts"] for m in ms) == [1, 1, 1, 2]
    assert all(m["status"] == "ok" for m in ms)
    assert len(fake_devices.commands("wait-for-device")) == 1
    # the files were still on the device after the reconnect: checked by hash, not re-pushed
    assert len(fake_devices.commands("push")) == 3


def test_disconnect_for_good_fails_the_rest_and_continues(fake_devices, fake_binary, tiny_models,
                                                          run_cli, fast, tmp_path):
    fake_devices.set(FAKE_ADB_DISCONNECT_ON_RUN="2", FAKE_ADB_RECONNECT="0")
    out = tmp_path / "out"
    t0 = time.monotonic()
    code, stdout, _ = run_cli("bench", tiny_models["float32"], tiny_models["qat_int8"],
                              "--adb", fake_devices.adb, "--benchmark-model", fake_binary,
                              "--repeats", "2", "--reconnect-timeout", "1", "--out", out, *fast)
    assert code == 1
    doc = load(out)
    ms = sorted((m for r in doc["results"] for m in r["repeat_measurements"]),
                key=lambda m: m["order"])
    assert [m["status"] for m in ms] == ["ok", "failed", "failed", "failed"]
    assert "did not come back within 1 s" in ms[1]["error"]
    assert all("lost earlier" in m["error"] for m in ms[2:])
    # one bounded wait, then the remaining visits fail fast instead of waiting again
    assert len(fake_devices.commands("wait-for-device")) == 1
    assert time.monotonic() - t0 < 30
    assert "Failures:" in stdout


def test_missing_binary_and_abi_mismatch(fake_devices, make_binary, tiny_models, run_cli, fast,
                                         tmp_path):
    args = ["bench", tiny_models["float32"], "--adb", fake_devices.adb, "--out",
            tmp_path / "out", *fast]
    code, _, err = run_cli(*args)
    assert code == 2 and "No benchmark_model binary given" in err
    assert "BENCHMARK_MODEL_PATH" in err
    code, _, err = run_cli(*args, "--benchmark-model", make_binary("armeabi-v7a"))
    assert code == 2 and "does not match the device ABI" in err
    assert "android_aarch64_benchmark_model" in err
    assert fake_devices.commands("push") == []  # checked before anything was copied


def test_missing_adb(tiny_models, fake_binary, run_cli, tmp_path, monkeypatch, fast):
    monkeypatch.setenv("PATH", str(tmp_path))
    for var in ("ADB", "ANDROID_HOME", "ANDROID_SDK_ROOT"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = run_cli("bench", tiny_models["float32"], "--benchmark-model", fake_binary,
                           *fast)
    assert code == 2 and "adb was not found" in err and "platform-tools" in err


def test_core_mask_runs_under_taskset(fake_devices, fake_binary, tiny_models, run_cli, fast,
                                      tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("bench", tiny_models["float32"], "--adb", fake_devices.adb,
                           "--benchmark-model", fake_binary, "--core-mask", "f0", "--repeats",
                           "1", "--out", out, *fast)
    assert code == 0, err
    runs = [a for a in fake_devices.commands("shell") if "--graph=" in a[-1]]
    assert runs and all(a[-1].startswith("taskset f0 /data/local/tmp/") for a in runs)
    assert result(load(out), "float32", "t1/xnnpack/mask=f0")["status"] == "ok"
    code, _, err = run_cli("bench", tiny_models["float32"], "--adb", fake_devices.adb,
                           "--benchmark-model", fake_binary, "--core-mask", "1ff", *fast)
    assert code == 2 and "cores the device does not have" in err


def test_partial_delegation_with_require_full_delegation(fake_devices, fake_binary, tiny_models,
                                                         run_cli, fast, tmp_path):
    fake_devices.set(FAKE_BM_DELEGATE_KERNELS="3")
    out = tmp_path / "out"
    base = ["bench", tiny_models["float32"], "--adb", fake_devices.adb, "--benchmark-model",
            fake_binary, "--delegate", "gpu", "--repeats", "1", *fast]
    code, _, _ = run_cli(*base, "--out", out)
    assert code == 0
    r = result(load(out), "float32", "t1/gpu")
    assert r["delegation"] == {"delegate": "GPU", "status": "partial", "delegate_kernels": 3}
    code, _, _ = run_cli(*base, "--require-full-delegation", "--out", tmp_path / "strict")
    assert code == 1
    r = result(load(tmp_path / "strict"), "float32", "t1/gpu")
    assert r["status"] == "failed" and "Disallowed CPU fallback detected" in r["errors"][0]
    log = Path(r["errors"][0].split("(log: ")[1].rstrip(")."))
    assert "Disallowed CPU fallback detected." in log.read_text()  # kept for inspection


def test_real_inputs_are_pushed_as_raw_tensors(fake_devices, fake_binary, tiny_models,
                                               inputs_npz, run_cli, fast, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("bench", tiny_models["float32"], tiny_models["qat_int8"],
                           "--adb", fake_devices.adb, "--benchmark-model", fake_binary,
                           "--inputs", inputs_npz, "--repeats", "1", "--out", out,
                           "--keep-device-files", *fast)
    assert code == 0, err  # the emulator checks names and byte sizes of the files
    (work,) = fake_devices.workdirs()
    sizes = sorted(p.stat().st_size for p in (work / "inputs").rglob("*.bin"))
    assert sizes == [64, 256]  # 8x8x1 int8 and float32
    x0 = np.load(inputs_npz)["x_test"][0]
    f32 = next(p for p in (work / "inputs").rglob("*.bin") if p.stat().st_size == 256)
    assert np.array_equal(np.fromfile(f32, np.float32).reshape(8, 8, 1), x0)
    from pipeline.tflite.tflite_model import TFLiteModel

    (tensor,) = TFLiteModel.from_file(tiny_models["float32"]).inputs()
    assert ":" in tensor.name  # e.g. serving_default_pixels:0 - exercises the '::' escape
    run = next(a[-1] for a in fake_devices.commands("shell") if "--input_layer=" in a[-1])
    assert f"--input_layer={tensor.name}" in run and "--input_layer_shape=1,8,8,1" in run
    assert f"--input_layer_value_files={tensor.name.replace(':', '::')}:/data/" in run


def test_thermal_wait_before_each_run(fake_devices, fake_binary, tiny_models, run_cli, fast,
                                      tmp_path):
    # Hottest zone: 60 degC at first, cooling down to 38; wait until below 45 before each run.
    fake_devices.set(FAKE_ADB_THERMAL="60,57,54,50,47,44,41,38")
    out = tmp_path / "out"
    code, _, err = run_cli("bench", tiny_models["float32"], "--adb", fake_devices.adb,
                           "--benchmark-model", fake_binary, "--repeats", "2", "--max-temp",
                           "45", "--thermal-poll", "0.05", "--out", out, *fast)
    assert code == 0, err
    ms = result(load(out), "float32")["repeat_measurements"]
    assert ms[0]["wait_s"] > 0 and not ms[0]["wait_timed_out"]
    for m in ms:
        assert max(m["thermal_before"].values()) < 45
        assert m["thermal_after"]


def test_op_profiling_lists_the_models_operators(fake_devices, fake_binary, tiny_models,
                                                 run_cli, fast, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("bench", tiny_models["qat_int8"], "--adb", fake_devices.adb,
                           "--benchmark-model", fake_binary, "--op-profiling", "--repeats", "1",
                           "--out", out, *fast)
    assert code == 0, err
    from pipeline.tflite.tflite_model import TFLiteModel

    ops = [op.opcode for op in TFLiteModel.from_file(tiny_models["qat_int8"]).main.operators]
    profile = result(load(out), "qat_int8")["repeat_measurements"][0]["op_profile"]
    assert [row["node type"] for row in profile] == ops
    assert sum(row["%"] for row in profile) == pytest.approx(100, abs=0.1)


def test_benchmark_apk(fake_devices, tiny_models, run_cli, fast, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("bench", tiny_models["float32"], "--adb", fake_devices.adb, "--apk",
                           "--repeats", "1", "--out", out, *fast)
    assert code == 2 and "benchmark APK is not installed" in err
    assert "android_aarch64_benchmark_model.apk" in err
    apk = tmp_path / "android_aarch64_benchmark_model.apk"
    apk.write_bytes(b"PK\x03\x04 FAKE-TFLITE-BENCHMARK-APK")
    code, _, err = run_cli("bench", tiny_models["float32"], "--adb", fake_devices.adb,
                           "--install-apk", apk, "--repeats", "1", "--out", out, *fast)
    assert code == 0, err
    doc = load(out)
    assert doc["targets"][0]["tool"]["name"] == "benchmark_model APK"
    assert doc["targets"][0]["tool"]["version"] == "2.16.1-fake"
    r = result(doc, "float32")
    assert r["status"] == "ok" and r["repeat_measurements"][0]["count"] >= 50
    starts = [a[-1] for a in fake_devices.commands("shell") if a[-1].startswith("am start")]
    assert len(starts) == 1 and "org.tensorflow.lite.benchmark/.BenchmarkModelActivity" in starts[0]


def _sigint_default() -> None:
    # A process started in the background by a non-interactive shell inherits SIGINT as
    # ignored, and Python keeps it ignored: the harness would then never see the Ctrl-C (the
    # test timed out, or the harness ran to completion). Whether the test runner has SIGINT
    # ignored depends on how it was started and on what it imported, so the child's
    # disposition is set here, as an interactive terminal would give it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_removes_the_device_work_directory(fake_devices, fake_binary, tiny_models,
                                                  tmp_path):
    fake_devices.set(FAKE_BM_SLEEP_S="60")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "android_harness", "bench", str(tiny_models["float32"]),
         "--adb", str(fake_devices.adb), "--benchmark-model", str(fake_binary), "--cooldown",
         "0", "--repeats", "1", "--out", str(tmp_path / "out"), "-q"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_sigint_default)
    try:
        deadline = time.monotonic() + 60
        while not any("--graph=" in a[-1] for a in fake_devices.commands("shell")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        assert fake_devices.workdirs()  # the run is in progress on the device
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed test leaves no harness or fake benchmark running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert fake_devices.workdirs() == []


def test_devices_command(fake_devices, run_cli):
    fake_devices.set(FAKE_ADB_DEVICES="PHONE_A:device,PHONE_B:unauthorized")
    code, out, _ = run_cli("devices", "--adb", fake_devices.adb)
    assert code == 0
    assert "| PHONE_A | device | Google Pixel 7 | 14 (SDK 34) | arm64-v8a |" in out
    assert "| PHONE_B | unauthorized | Unlock the phone" in out
    code, out, _ = run_cli("devices", "--adb", fake_devices.adb, "--json")
    rows = json.loads(out)
    assert rows[0]["serial"] == "PHONE_A" and rows[0]["cores"] == 8
    assert rows[1]["state"] == "unauthorized" and "hint" in rows[1]


def test_control_bytes_from_adb_are_never_echoed_raw(fake_devices, fake_binary, run_cli):
    """A phone's property and an adb serial carrying terminal escapes (clear screen, set the
    window title, bell, colour) are printed escaped, in the table and in errors."""
    evil_model = "\x1b[2J\x1b]0;pwned\x07Pixel\x7f7"
    fake_devices.set(FAKE_ADB_DEVICES="GOOD:device,EVIL\x1b[31m:unauthorized",
                     FAKE_ADB_PRODUCT_MODEL=evil_model)
    code, out, err = run_cli("devices", "--adb", fake_devices.adb)
    assert code == 0
    for raw in ("\x1b", "\r", "\x07"):
        assert raw not in out and raw not in err
    assert "Google \\x1b[2J\\x1b]0;pwned\\x07Pixel\\x7f7 |" in out
    assert "| EVIL\\x1b[31m | unauthorized |" in out
    code, out, _ = run_cli("devices", "--adb", fake_devices.adb, "--json")
    assert "\x1b" not in out and json.loads(out)[0]["model"] == evil_model
    # an error quoting adb's words goes through the same escaping
    model = Path(os.environ["FAKE_ADB_ROOT"]).parent / "m\x1b[31m.tflite"
    from tests import tflite_craft as craft

    model.write_bytes(craft.tiny_model())
    code, _, err = run_cli("bench", model, "--adb", fake_devices.adb, "--serial", "EVIL\x1b[31m",
                           "--benchmark-model", fake_binary, "-q", "--cooldown", "0")
    assert code != 0 and "\x1b" not in err and "\\x1b[31m" in err
