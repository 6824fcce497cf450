"""Device backend: the protocol on an Android phone with TFLite's benchmark_model over adb.

Files live in one work directory, DEVICE_ROOT/<run-id>; its removal is registered before the
first file is pushed and runs at the end, on Ctrl-C and at interpreter exit. Each file is pushed
only when its sha256 on the device differs. A device that drops during a visit gets one
``adb wait-for-device`` (bounded) and one retry; after that the visit is marked failed and the
run goes on.

Two ways to run the tool: the native binary (``adb shell [taskset MASK] BINARY FLAGS``), or the
official benchmark APK (``am start ... BenchmarkModelActivity --es args "FLAGS"``, results read
back from logcat tag ``tflite``). The APK splits its args on whitespace, so in APK mode the
device-side file names are derived from the sha256 instead of the original names.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from android_harness import benchmark_tool as bt
from android_harness.adb import DEVICE_ROOT, Adb
from android_harness.conditions import Device
from android_harness.errors import (BenchmarkToolError, DeviceUnavailable, HarnessError,
                                    MeasurementFailed, UsageError)
from android_harness.inputs import ModelInput, load_inputs
from android_harness.protocol import Backend, Job, Protocol
from android_harness.records import BenchConfig, Measurement, ModelInfo, now_iso
from pipeline.core.artifacts import sha256_file

log = logging.getLogger("android_harness.device")

# -- cleanup registry: runs at exit, on Ctrl-C (cli), and when a backend closes --------------
_CLEANUPS: dict[int, Callable[[], None]] = {}
_LOCK = threading.Lock()


def register_cleanup(fn: Callable[[], None]) -> int:
    with _LOCK:
        key = id(fn)
        _CLEANUPS[key] = fn
    return key


def run_cleanups() -> None:
    with _LOCK:
        fns = list(_CLEANUPS.values())
        _CLEANUPS.clear()
    for fn in fns:
        try:
            fn()
        except Exception as exc:  # best effort: the device may be gone
            log.warning("cleanup failed: %s", exc)


atexit.register(run_cleanups)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"


class DeviceBackend(Backend):
    kind = "device"
    default_cooldown_s = 30.0

    def __init__(self, adb: Adb, *, run_id: str, binary: Path | None = None,
                 apk: Path | bool | None = None, inputs: str | None = None,
                 log_dir: Path | None = None, keep_files: bool = False,
                 poll_s: float = 1.0):
        if adb.serial is None:
            raise UsageError("A device backend needs a serial", None, "Pass --serial or --all")
        super().__init__(adb.serial)
        if binary is None and not apk:
            raise UsageError("No benchmark tool given", None,
                             "Pass --benchmark-model PATH (or set BENCHMARK_MODEL_PATH) or --apk")
        self.adb, self.device = adb, Device(adb)
        self.binary, self.apk = binary, apk
        self.inputs_spec, self.log_dir, self.keep_files = inputs, log_dir, keep_files
        self.poll_s = poll_s
        self.workdir = DEVICE_ROOT / run_id
        self.remote_binary = self.workdir / "benchmark_model"
        self._files: list[tuple[Path, PurePosixPath, bool, str | None]] = []
        self._models: dict[str, PurePosixPath] = {}
        self._inputs: dict[str, list[tuple[str, tuple[int, ...], str]]] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._cleanup_key: int | None = None
        self._binary_sha = sha256_file(binary) if binary else None
        self.pushed_log: list[list[str]] = []  # remotes pushed by each sync (for the record)
        self._last_output: str | None = None

    # -- Backend API -------------------------------------------------------------------------
    def conditions(self) -> dict:
        # No separate get-state: a device that is not usable fails this read with adb's own
        # message, which raise_for turns into DeviceUnavailable (offline, unauthorized, ...).
        return self.device.conditions()

    def tool_info(self) -> dict:
        if self.apk:
            res = self.adb.shell(["dumpsys", "package", bt.APK_PACKAGE], check=False)
            m = re.search(r"versionName=(\S+)", res.stdout)
            return {"name": "benchmark_model APK", "package": bt.APK_PACKAGE,
                    "version": m.group(1) if m else None,
                    "apk": os.fspath(self.apk) if isinstance(self.apk, Path) else None}
        return {"name": "benchmark_model", "binary": os.fspath(self.binary),
                "sha256": self._binary_sha, "size_bytes": self.binary.stat().st_size,
                "abi": bt.elf_abi(self.binary)}

    def thermal(self) -> dict[str, float]:
        return self.device.thermal_zones()

    def available(self) -> bool:
        return self.adb.get_state() == "device"

    def prepare(self, models: Sequence[ModelInfo], configs: Sequence[BenchConfig],
                protocol: Protocol) -> None:
        ident = self.device.identity()
        if self.binary is not None and not self.apk:
            bt.check_abi(self.binary, ident.get("abi") or "unknown", self.target_id)
        cores = len(self.device.cpus) or None
        for c in configs:
            if c.core_mask and self.apk:
                raise UsageError("A core mask cannot be applied to the benchmark APK",
                                 f"--core-mask {c.core_mask}", "Use the native binary for taskset")
            if c.core_mask and cores and max(c.cores()) >= cores:
                raise UsageError("The core mask names cores the device does not have",
                                 f"--core-mask {c.core_mask} on {self.target_id} ({cores} cores)",
                                 "Check the clusters in `android-harness devices --json`")
        if self.apk:
            self._ensure_apk()
        # Registered before anything is written, so an interrupted run still cleans up.
        if not self.keep_files:
            self._cleanup_key = register_cleanup(self._remove_workdir)
        if self.binary is not None and not self.apk:
            self._files.append((self.binary, self.remote_binary, True, self._binary_sha))
        self._tmp = tempfile.TemporaryDirectory(prefix="harness-inputs-")
        for i, m in enumerate(models):
            name = f"{m.sha256[:16]}.tflite" if self.apk else Path(m.path).name
            remote = self.workdir / "models" / str(i) / name
            self._models[m.label] = remote
            self._files.append((Path(m.path), remote, False, m.sha256))
            if self.inputs_spec:
                self._inputs[m.label] = self._stage_inputs(i, m, load_inputs(self.inputs_spec,
                                                                             m.path))
        self._sync_files()

    def measure(self, job: Job, protocol: Protocol) -> Measurement:
        started, t0 = now_iso(), time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                text = self._run_tool(job, protocol)
                break
            except DeviceUnavailable as exc:
                if attempts >= 2:
                    raise self._failed(f"Device {self.target_id} disconnected again after a "
                                       "reconnect", exc, attempts)
                log.warning("%s: %s; waiting up to %g s for it to come back", self.target_id,
                            exc, protocol.reconnect_timeout_s)
                if not self.adb.wait_for_device(protocol.reconnect_timeout_s):
                    raise self._failed(f"Device {self.target_id} disconnected and did not come "
                                       f"back within {protocol.reconnect_timeout_s:g} s", exc,
                                       attempts)
                try:
                    self._sync_files()  # a reboot may have wiped /data/local/tmp
                except DeviceUnavailable as again:
                    raise self._failed("Device lost while restoring its files", again, attempts)
            except HarnessError as exc:  # the tool failed: no retry; keep what it printed
                raw = self._save_log(job, self._last_output) if self._last_output else None
                raise MeasurementFailed(str(exc).rstrip(".") + (f" (log: {raw})" if raw
                                                                else "")) from exc
        raw = self._save_log(job, text)
        try:
            rep = bt.parse_output(text)
        except HarnessError as exc:
            raise MeasurementFailed(str(exc).rstrip(".") + (f" (log: {raw})" if raw else "")) \
                from exc
        if rep.fallback_detected:
            raise MeasurementFailed("The delegate did not take the whole graph and "
                                    "--require-full-delegation is set",
                                    f"{job.model.label} {job.config.key}: "
                                    f"{bt.FALLBACK_MESSAGE}", "Drop the flag to accept fallback")
        s = rep.inference
        return Measurement(
            job.model.label, job.config.key, job.repeat, job.order, started_at=started,
            wall_s=time.monotonic() - t0, attempts=attempts, count=s.count, mean_us=s.avg,
            std_us=s.std, min_us=s.min, max_us=s.max, median_us=s.median, p5_us=s.p5,
            p95_us=s.p95, init_us=rep.init_us, first_us=rep.first_us,
            warmup_avg_us=rep.warmup_avg_us,
            warmup_count=rep.warmup.count if rep.warmup else None,
            memory={k: v for k, v in (("init_mb", rep.memory_init_mb),
                                      ("overall_mb", rep.memory_overall_mb),
                                      ("peak_mb", rep.memory_peak_mb)) if v is not None},
            delegation=rep.delegation, op_profile=rep.op_profile or None, raw_log=raw)

    def close(self) -> None:
        if self._cleanup_key is not None:
            with _LOCK:
                _CLEANUPS.pop(self._cleanup_key, None)
            self._cleanup_key = None
            try:
                self._remove_workdir()
            except Exception as exc:
                log.warning("could not remove %s on %s: %s", self.workdir, self.target_id, exc)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- helpers -----------------------------------------------------------------------------
    def _remove_workdir(self) -> None:
        self.adb.remove_tree(self.workdir)

    def _failed(self, what: str, exc: Exception, attempts: int) -> MeasurementFailed:
        err = MeasurementFailed(what, str(exc).rstrip("."), "Reconnect the device and rerun")
        err.device_lost, err.attempts = True, attempts
        return err

    def _sync_files(self) -> None:
        pushed = self.adb.ensure_files(self._files)
        self.pushed_log.append([str(r) for r in pushed])
        log.info("%s: pushed %d file(s), %d already up to date", self.target_id, len(pushed),
                 len(self._files) - len(pushed))

    def _stage_inputs(self, i: int, model: ModelInfo,
                      inputs: list[ModelInput]) -> list[tuple[str, tuple[int, ...], str]]:
        staged = []
        for k, inp in enumerate(inputs):
            local = Path(self._tmp.name) / f"{i}_{k}.bin"
            local.write_bytes(inp.batch_bytes(0))
            remote = self.workdir / "inputs" / str(i) / f"input{k}.bin"
            self._files.append((local, remote, False, None))
            staged.append((inp.name, inp.shape, str(remote)))
        return staged

    def _ensure_apk(self) -> None:
        res = self.adb.shell(["pm", "list", "packages", bt.APK_PACKAGE], check=False)
        installed = f"package:{bt.APK_PACKAGE}" in res.stdout.split()
        if isinstance(self.apk, Path):
            out = self.adb.run(["install", "-r", "-d", "-g", str(self.apk.resolve())],
                               timeout=300, check=False)
            if "Success" not in out.output:
                raise BenchmarkToolError("The benchmark APK could not be installed",
                                         out.output.strip().splitlines()[-1:] or out.returncode,
                                         "Use the APK for the device ABI "
                                         "(android_aarch64_benchmark_model.apk for arm64)")
        elif not installed:
            raise BenchmarkToolError("The benchmark APK is not installed on the device",
                                     f"{self.target_id}: no package {bt.APK_PACKAGE}",
                                     f"Pass --install-apk PATH ({bt.NIGHTLY}"
                                     "android_aarch64_benchmark_model.apk)")

    def _flags(self, job: Job, protocol: Protocol) -> list[str]:
        return bt.build_flags(
            str(self._models[job.model.label]), threads=job.config.threads,
            delegate=job.config.delegate, warmup_runs=protocol.warmup_runs,
            warmup_seconds=protocol.warmup_seconds, min_runs=protocol.min_runs,
            min_seconds=protocol.min_seconds, max_seconds=protocol.max_seconds,
            op_profiling=protocol.op_profiling,
            require_full_delegation=protocol.require_full_delegation,
            peak_memory=protocol.peak_memory, inputs=self._inputs.get(job.model.label, ()))

    def _timeout(self, protocol: Protocol) -> float:
        return protocol.max_seconds * 2 + protocol.warmup_seconds + 120.0

    def _run_tool(self, job: Job, protocol: Protocol) -> str:
        flags = self._flags(job, protocol)
        if self.apk:
            return self._run_apk(flags, protocol)
        argv = [str(self.remote_binary), *flags]
        if job.config.core_mask:
            argv = ["taskset", job.config.core_mask, *argv]
        self._last_output = None
        res = self.adb.shell(argv, timeout=self._timeout(protocol), check=False)
        self._last_output = res.output
        if res.returncode != 0 and self.adb.get_state() != "device":
            raise self.adb.unavailable(self.adb.get_state(),
                                        f"benchmark_model exited {res.returncode} mid-run")
        if res.returncode != 0:
            bt.parse_output(res.output)  # raises, quoting the tool's own error line
            raise BenchmarkToolError("benchmark_model exited with an error",
                                     f"exit {res.returncode}", "Rerun with --debug")
        return res.output

    def _run_apk(self, flags: list[str], protocol: Protocol) -> str:
        if any(re.search(r"\s", f) for f in flags):
            raise UsageError("The benchmark APK cannot take arguments containing whitespace",
                             [f for f in flags if re.search(r"\s", f)], "Use the native binary")
        self._last_output = None
        self.adb.shell(["logcat", "-c"])
        res = self.adb.shell(["am", "start", "-S", "-W", "-n", bt.APK_ACTIVITY, "--es", "args",
                              " ".join(flags)], check=False)
        if res.returncode != 0 or "Error" in res.stdout:
            if self.adb.get_state() != "device":
                raise self.adb.unavailable(self.adb.get_state(), "am start failed")
            raise BenchmarkToolError("The benchmark APK could not be started",
                                     res.output.strip().splitlines()[-1:],
                                     f"Check `adb shell pm list packages {bt.APK_PACKAGE}`")
        deadline = time.monotonic() + self._timeout(protocol)
        while True:
            out = self.adb.shell(["logcat", "-d", "-v", "brief", "-s", "tflite:V"],
                                 timeout=60).stdout
            self._last_output = out
            if "Inference timings in us" in out or "Average inference timings" in out:
                return out
            if re.search(r"Benchmarking failed|Disallowed CPU fallback|Failed to ", out):
                return out
            if time.monotonic() > deadline:
                raise BenchmarkToolError("The benchmark APK printed no result in time",
                                         f"{self._timeout(protocol):g} s", "Check `adb logcat -s "
                                         "tflite` on the device")
            time.sleep(self.poll_s)

    def _save_log(self, job: Job, text: str) -> str | None:
        if self.log_dir is None:
            return None
        d = self.log_dir / _safe_name(self.target_id)
        d.mkdir(parents=True, exist_ok=True)
        path = d / (f"{job.order:03d}_{_safe_name(job.model.label)}_"
                    f"{_safe_name(job.config.key)}.log")
        path.write_text(text)
        return os.fspath(path)
