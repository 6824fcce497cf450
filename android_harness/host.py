"""Host backend: the same protocol on this machine with the LiteRT Python interpreter.

Each visit builds a fresh interpreter (like a fresh benchmark_model process on the phone),
times interpreter construction + tensor allocation as "init", the first invoke, the warm-up,
then every invoke with ``time.perf_counter_ns`` around ``interpreter.invoke()`` alone (inputs
are set outside the timed region, the garbage collector is paused while timing - as timeit
does). Random inputs follow benchmark_model (tools/benchmark/benchmark_tflite_model.cc
CreateRandomTensorData): float uniform in [-0.5, 0.5), int8 in [-127, 127], uint8 in [0, 254],
other integers in [0, 99].
"""

from __future__ import annotations

import gc
import glob
import importlib.metadata as md
import os
import platform
import resource
import sys
import time
from typing import Sequence

import numpy as np

from android_harness.errors import MeasurementFailed, UsageError
from android_harness.inputs import ModelInput, load_inputs
from android_harness.protocol import (Backend, BenchConfig, Job, Measurement, ModelInfo,
                                      Protocol, now_iso)
from pipeline.errors import QatError
from pipeline.runtime import make_interpreter, resolve_runtime

HOST_DELEGATES = ("cpu", "xnnpack")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def rss_mb() -> float | None:
    """Resident set size of this process (Linux /proc/self/statm, as benchmark_model)."""
    text = _read("/proc/self/statm")
    if not text:
        return None
    return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def cpu_busy_seconds() -> float | None:
    """CPU time spent busy by the whole machine, all CPUs (/proc/stat first line)."""
    line = (_read("/proc/stat") or "").split("\n", 1)[0].split()
    if not line or line[0] != "cpu":
        return None
    v = [int(x) for x in line[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    steal = v[7] if len(v) > 7 else 0  # time the hypervisor gave to someone else
    return (sum(v[:8]) - idle - steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of its finished children (a benchmark it ran)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


class BackgroundMeter:
    """CPUs' worth of work done by other processes between start() and stop(): the host
    analogue of a phone's thermal state - on a shared 2-core machine another process on the
    sibling CPU slows every invoke by ~35 % (measured with benchmarks/harness_host_bench.py)."""

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.monotonic(), cpu_busy_seconds(), own_cpu_seconds()

    def stop(self) -> float | None:
        busy, wall = cpu_busy_seconds(), time.monotonic() - self.t0
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        return max(0.0, (busy - self.busy0) - (own_cpu_seconds() - self.own0)) / wall


def thermal_zones(root: str = "/sys/class/thermal") -> dict[str, float]:
    out = {}
    for zone in sorted(glob.glob(os.path.join(root, "thermal_zone*"))):
        raw, kind = _read(os.path.join(zone, "temp")), _read(os.path.join(zone, "type"))
        if raw and raw.lstrip("-").isdigit():
            out[f"{kind or os.path.basename(zone)}"] = int(raw) / 1000.0
    return out


def host_conditions() -> dict:
    cpus = []
    for cpu in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*"),
                      key=lambda p: int(p.rsplit("cpu", 1)[1])):
        mx = _read(f"{cpu}/cpufreq/cpuinfo_max_freq")
        cpus.append({"cpu": int(cpu.rsplit("cpu", 1)[1]),
                     "max_khz": int(mx) if mx and mx.isdigit() else None,
                     "governor": _read(f"{cpu}/cpufreq/scaling_governor")})
    model = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware")):
            model = line.split(":", 1)[1].strip()
            break
    battery = {}
    for bat in glob.glob("/sys/class/power_supply/BAT*"):
        level = _read(f"{bat}/capacity")
        battery = {"level": int(level) if level and level.isdigit() else None,
                   "status": _read(f"{bat}/status")}
        break
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"kind": "host", "hostname": platform.node(), "system": platform.system(),
            "release": platform.release(), "machine": platform.machine(), "cpu_model": model,
            "cores": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else None, "cpus": cpus,
            "governors": sorted({c["governor"] for c in cpus if c["governor"]}),
            "load_average": list(load) if load else None, "battery": battery or None,
            "thermal": thermal_zones(), "python": sys.version.split()[0],
            "numpy": np.__version__}


def random_input(shape: Sequence[int], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.uniform(-0.5, 0.5, shape).astype(dtype)
    if dtype == np.int8:
        return rng.integers(-127, 128, shape).astype(dtype)
    if dtype == np.uint8:
        return rng.integers(0, 255, shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    raise UsageError("Cannot generate random data for this input dtype", dtype.name,
                     "Pass --inputs with real data")


class HostBackend(Backend):
    kind = "host"
    default_cooldown_s = 0.0

    def __init__(self, *, runtime: str | None = None, inputs: str | None = None):
        super().__init__("host")
        self.runtime_name, _ = resolve_runtime(runtime)
        self.inputs_spec = inputs
        self._inputs: dict[str, list[ModelInput]] = {}
        self._paths: dict[str, str] = {}

    def conditions(self) -> dict:
        return host_conditions()

    def tool_info(self) -> dict:
        package = {"litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                   "tensorflow": "tensorflow"}[self.runtime_name]
        try:
            version = md.version(package)
        except md.PackageNotFoundError:
            version = None
        return {"name": "LiteRT Python interpreter", "runtime": self.runtime_name,
                "package": package, "version": version, "timer": "time.perf_counter_ns"}

    def thermal(self) -> dict[str, float]:
        return thermal_zones()

    def background_load(self, sample_s: float = 0.5) -> float | None:
        meter = BackgroundMeter()
        meter.start()
        time.sleep(sample_s)
        return meter.stop()

    def prepare(self, models: Sequence[ModelInfo], configs: Sequence[BenchConfig],
                protocol: Protocol) -> None:
        for c in configs:
            if c.delegate not in HOST_DELEGATES:
                raise UsageError("The host backend runs on this CPU only", f"--delegate {c.delegate}",
                                 "Use --delegate cpu or xnnpack on the host, gpu/nnapi with bench")
            if c.core_mask and max(c.cores()) >= (os.cpu_count() or 1):
                raise UsageError("The core mask names cores this machine does not have",
                                 f"--core-mask {c.core_mask} on {os.cpu_count()} cores",
                                 "Use a mask within the host's cores")
        for m in models:
            self._paths[m.label] = m.path
            try:  # load once up front so a broken model fails the run, not each visit
                make_interpreter(m.path, runtime=self.runtime_name).allocate_tensors()
            except QatError:
                raise
            except (ValueError, RuntimeError) as exc:
                raise MeasurementFailed("The interpreter cannot allocate the model", m.path,
                                        str(exc).splitlines()[0])
            if self.inputs_spec:
                self._inputs[m.label] = load_inputs(self.inputs_spec, m.path)

    def measure(self, job: Job, protocol: Protocol) -> Measurement:
        cfg = job.config
        old_affinity = os.sched_getaffinity(0) if cfg.core_mask else None
        try:
            if cfg.core_mask:
                os.sched_setaffinity(0, cfg.cores())
            return self._measure(job, protocol)
        except (ValueError, RuntimeError) as exc:
            raise MeasurementFailed("The interpreter failed", f"{job.model.label} "
                                    f"{cfg.key}", str(exc).splitlines()[0])
        finally:
            if old_affinity is not None:
                os.sched_setaffinity(0, old_affinity)

    def _measure(self, job: Job, protocol: Protocol) -> Measurement:
        cfg, pc = job.config, time.perf_counter_ns
        started, wall0 = now_iso(), time.monotonic()
        meter = BackgroundMeter()
        meter.start()
        rss0 = rss_mb()
        t0 = pc()
        interp = make_interpreter(job.model.path, runtime=self.runtime_name,
                                  num_threads=cfg.threads, xnnpack=cfg.delegate == "xnnpack")
        interp.allocate_tensors()
        init_us = (pc() - t0) / 1e3
        rss_init = rss0 and rss_mb()
        details = interp.get_input_details()
        real = self._inputs.get(job.model.label)
        if real:
            feeds = [[inp.batch(i) for i in range(inp.count)] for inp in real]
        else:  # one random sample per input, seeded per model x repeat (reproducible)
            rng = np.random.default_rng([protocol.seed, job.repeat,
                                         int(job.model.sha256[:8], 16)])
            feeds = [[random_input(d["shape"], d["dtype"], rng)] for d in details]
        indices = [d["index"] for d in details]
        set_tensor, invoke = interp.set_tensor, interp.invoke
        n_feeds = max(len(f) for f in feeds)

        def feed(k: int) -> None:
            for idx, values in zip(indices, feeds):
                set_tensor(idx, values[k % len(values)])

        max_end = pc() + int(protocol.max_seconds * 1e9)
        feed(0)
        t0 = pc()
        invoke()
        first_us = (pc() - t0) / 1e3
        warm = [first_us]
        warm_end = pc() + int(protocol.warmup_seconds * 1e9)
        while (len(warm) < protocol.warmup_runs or pc() < warm_end) and pc() < max_end:
            if n_feeds > 1:
                feed(len(warm))
            t0 = pc()
            invoke()
            warm.append((pc() - t0) / 1e3)
        lat: list[int] = []
        append = lat.append
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            end = pc() + int(protocol.min_seconds * 1e9)
            k = 0
            while len(lat) < protocol.min_runs or pc() < end:
                if n_feeds > 1:
                    feed(k)
                    k += 1
                t0 = pc()
                invoke()
                t1 = pc()
                append(t1 - t0)
                if t1 > max_end:
                    break
        finally:
            if gc_was_enabled:
                gc.enable()
        background = meter.stop()
        us = np.asarray(lat, dtype=np.float64) / 1e3
        rss_end = rss_mb()
        memory = {}
        if rss0 is not None:
            memory = {"init_mb": round(rss_init - rss0, 4), "overall_mb": round(rss_end - rss0, 4),
                      "source": "RSS delta of this process (/proc/self/statm)"}
        return Measurement(
            job.model.label, cfg.key, job.repeat, job.order, started_at=started,
            wall_s=time.monotonic() - wall0, latencies_us=us.round(3).tolist(), count=int(us.size),
            mean_us=float(us.mean()), std_us=float(us.std()), min_us=float(us.min()),
            max_us=float(us.max()), median_us=float(np.median(us)),
            p5_us=float(np.percentile(us, 5)), p95_us=float(np.percentile(us, 95)),
            init_us=init_us, first_us=first_us, warmup_avg_us=float(np.mean(warm)),
            warmup_count=len(warm), memory=memory,
            background_cpu=None if background is None else round(background, 3),
            delegation={"delegate": "XNNPACK", "status": "default"} if cfg.delegate == "xnnpack"
            else {"delegate": None, "status": "builtin kernels"})
