"""What this machine reports about itself while the host backend measures: CPUs, governors,
load, thermal zones, battery, and the CPU time other processes take (the host's counterpart of
android_harness/conditions.py). Linux /proc and /sys; fields a system lacks are None."""

from __future__ import annotations

import glob
import os
import platform
import resource
import sys
import time

import numpy as np


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
    """CPUs' worth of work done by other processes between start() and stop(), from
    /proc/stat minus this process and its children. Recorded with every host repeat: like a
    phone's temperature, it is a condition that can explain a slow or unstable figure (on the
    shared 2-core development VM it did not explain the largest swings - those come from the
    hypervisor's host, see benchmarks/harness_host_bench.py)."""

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
