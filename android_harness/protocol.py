"""The measurement protocol, for a phone and for the host.

For every target (a device or this machine): record the conditions; then R rounds, each visiting
every model x configuration once in a seeded shuffled order (so drift - heating, a background
job - spreads over all models instead of landing on whichever ran last); each visit is one
fresh process/interpreter with warm-up, then at least N runs and at least S seconds. Between
visits: a cooldown (30 s on a device, none on the host) and, optionally, a wait until the
hottest thermal zone is below a threshold. Thermal zones are read before and after every visit.
A visit that fails (device gone after one reconnect attempt, tool error) is recorded as failed
and the run continues.

Interleaved mode (the host's default; ``--contiguous`` turns it off): every visit gets its own
fresh interpreter up front, then the visits take turns in short time slices, in a seeded shuffled order per round,
until each has its runs and seconds. Each repeat then samples the whole run's time span rather
than one stretch of it. On a machine whose speed changes by tens of percent every few seconds
for reasons outside its control (a shared cloud host), contiguous repeats land in different
speed regimes and their medians disagree; interleaved repeats see the same mix
(benchmarks/harness_host_bench.py measures both). A phone cannot interleave: each visit is one
benchmark_model process, and the cooldown between visits is part of the protocol.
"""

from __future__ import annotations

import abc
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

from android_harness.errors import MeasurementFailed, UsageError
from android_harness.records import BenchConfig, Measurement, ModelInfo, now_iso
from pipeline.core.errors import QatError

DEVICE_COOLDOWN_S = 30.0


@dataclass(frozen=True)
class Protocol:
    warmup_runs: int = 10
    warmup_seconds: float = 0.5
    min_runs: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 150.0
    repeats: int = 5
    cooldown_s: float | None = None  # None: the backend's default (30 s device, 0 host)
    max_temp_c: float | None = None  # wait until the hottest zone is below this
    max_background_cpu: float | None = None  # host: wait until other processes use less
    # Host only: run all visits at once in time slices (see the module docstring).
    interleave: bool = False
    slice_s: float = 0.02
    thermal_timeout_s: float = 300.0
    thermal_poll_s: float = 5.0
    reconnect_timeout_s: float = 60.0
    seed: int = 0
    stability_cv: float = 0.05
    op_profiling: bool = False
    require_full_delegation: bool = False
    peak_memory: bool = False

    def __post_init__(self):
        checks = [("warmup_runs", self.warmup_runs >= 0), ("warmup_seconds", self.warmup_seconds >= 0),
                  ("min_runs", self.min_runs >= 1), ("min_seconds", self.min_seconds >= 0),
                  ("max_seconds", self.max_seconds > 0), ("repeats", self.repeats >= 1),
                  ("thermal_timeout_s", self.thermal_timeout_s >= 0),
                  ("thermal_poll_s", self.thermal_poll_s > 0),
                  ("reconnect_timeout_s", self.reconnect_timeout_s > 0),
                  ("stability_cv", 0 < self.stability_cv < 1), ("slice_s", self.slice_s > 0)]
        if self.cooldown_s is not None:
            checks.append(("cooldown_s", self.cooldown_s >= 0))
        if self.max_background_cpu is not None:
            checks.append(("max_background_cpu", self.max_background_cpu > 0))
        for name, ok in checks:
            if not ok:
                raise UsageError(f"Protocol value {name} is out of range", getattr(self, name),
                                 "See `android-harness bench --help` for the allowed values")
        if self.max_seconds < self.min_seconds:
            raise UsageError("--max-seconds is below --min-seconds",
                             f"{self.max_seconds} < {self.min_seconds}", "Raise --max-seconds")

    def cooldown_for(self, backend: "Backend") -> float:
        return backend.default_cooldown_s if self.cooldown_s is None else self.cooldown_s

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    model: ModelInfo
    config: BenchConfig
    repeat: int  # 0-based round
    order: int  # position in this target's schedule


def make_schedule(models: Sequence[ModelInfo], configs: Sequence[BenchConfig], repeats: int,
                  seed: int) -> list[Job]:
    """R rounds; each round visits every (model, config) once, in a seeded shuffled order."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    pairs = [(m, c) for m in models for c in configs]
    for r in range(repeats):
        order = list(pairs)
        rng.shuffle(order)
        jobs += [Job(m, c, r, len(jobs) + i) for i, (m, c) in enumerate(order)]
    return jobs


class Backend(abc.ABC):
    """A place to measure: the host (LiteRT Python interpreter) or one Android device."""

    kind: str = "abstract"
    default_cooldown_s: float = 0.0

    def __init__(self, target_id: str):
        self.target_id = target_id

    @abc.abstractmethod
    def conditions(self) -> dict:
        """Hardware/software/thermal conditions, recorded at the start and end of a run."""

    @abc.abstractmethod
    def tool_info(self) -> dict:
        """What measures: runtime/tool name, version, binary hash."""

    @abc.abstractmethod
    def thermal(self) -> dict[str, float]:
        """Thermal-zone temperatures in degC ({} when the target exposes none)."""

    @abc.abstractmethod
    def prepare(self, models: Sequence[ModelInfo], configs: Sequence[BenchConfig],
                protocol: Protocol) -> None:
        """One-off setup (push files, load inputs); raises to fail the whole target."""

    @abc.abstractmethod
    def measure(self, job: Job, protocol: Protocol) -> Measurement:
        """One visit; raises MeasurementFailed (the run continues)."""

    def available(self) -> bool:
        return True

    def background_load(self) -> float | None:
        """CPUs' worth of work by other processes right now (None: not measurable)."""
        return None

    def close(self) -> None:
        """Release resources; must be safe to call twice and after a failure."""


@dataclass
class TargetRun:
    target: str
    kind: str
    status: str = "ok"  # 'ok' | 'failed' (nothing could be measured) | 'cancelled'
    error: str | None = None
    conditions_start: dict = field(default_factory=dict)
    conditions_end: dict = field(default_factory=dict)
    tool: dict = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    measurements: list[Measurement] = field(default_factory=list)
    exception: Exception | None = field(default=None, repr=False)  # setup failure, not saved


Progress = Callable[[str, int, int, Job, Measurement], None]


def _safe_thermal(backend: Backend) -> dict:
    try:
        return backend.thermal()
    except Exception:  # a vanished device has no temperatures; the visit reports why
        return {}


def wait_until_cool(backend: Backend, protocol: Protocol, cancel: threading.Event | None,
                    sleep: Callable[[float], None] = time.sleep) -> tuple[float, bool]:
    """Poll until the hottest zone is below max_temp_c (and, where measurable, other
    processes use less than max_background_cpu); (seconds waited, timed out)."""
    if protocol.max_temp_c is None and protocol.max_background_cpu is None:
        return 0.0, False
    start = time.monotonic()
    while True:
        temps = _safe_thermal(backend) if protocol.max_temp_c is not None else {}
        hot = bool(temps) and max(temps.values()) >= protocol.max_temp_c
        busy = False
        if protocol.max_background_cpu is not None:
            load = backend.background_load()
            busy = load is not None and load >= protocol.max_background_cpu
        if not hot and not busy:
            return time.monotonic() - start, False
        if time.monotonic() - start >= protocol.thermal_timeout_s or (cancel and cancel.is_set()):
            return time.monotonic() - start, True
        sleep(protocol.thermal_poll_s)


def run_target(backend: Backend, models: Sequence[ModelInfo], configs: Sequence[BenchConfig],
               protocol: Protocol, *, progress: Progress | None = None,
               cancel: threading.Event | None = None) -> TargetRun:
    run = TargetRun(backend.target_id, backend.kind, started_at=now_iso())
    try:
        run.conditions_start = backend.conditions()
        backend.prepare(models, configs, protocol)
        run.tool = backend.tool_info()  # after prepare: e.g. the APK it installed
    except QatError as exc:  # e.g. ABI mismatch, missing binary, device offline
        run.status, run.error, run.exception = "failed", str(exc), exc
        run.finished_at = now_iso()
        backend.close()
        return run
    schedule = make_schedule(models, configs, protocol.repeats, protocol.seed)
    if protocol.interleave:
        return _run_interleaved(backend, run, schedule, protocol, progress)
    cooldown = protocol.cooldown_for(backend)
    lost: str | None = None
    try:
        for i, job in enumerate(schedule):
            if cancel is not None and cancel.is_set():
                run.status = "cancelled"
                break
            if i > 0 and cooldown > 0:
                (cancel.wait if cancel is not None else time.sleep)(cooldown)
            waited, timed_out = wait_until_cool(backend, protocol, cancel)
            # Back to back (no cooldown, no wait): the previous "after" reading is this
            # "before" - one device round trip less per visit.
            fresh = i > 0 and cooldown == 0 and waited == 0 and run.measurements
            before = run.measurements[-1].thermal_after if fresh else _safe_thermal(backend)
            try:
                if lost is not None and not backend.available():
                    raise MeasurementFailed("Skipped: the device was lost earlier in this run",
                                            lost, "Reconnect it and rerun")
                m = backend.measure(job, protocol)
                lost = None
            except MeasurementFailed as exc:
                m = Measurement.failed(job, str(exc), getattr(exc, "attempts", 1))
                if getattr(exc, "device_lost", False):
                    lost = str(exc)
            m = replace(m, order=job.order, repeat=job.repeat,
                        cooldown_s=cooldown if i > 0 else 0.0, wait_s=waited,
                        wait_timed_out=timed_out, thermal_before=before,
                        thermal_after=_safe_thermal(backend))
            run.measurements.append(m)
            if progress is not None:
                progress(backend.target_id, i + 1, len(schedule), job, m)
        try:
            run.conditions_end = backend.conditions()
        except Exception as exc:
            run.conditions_end = {"error": str(exc)}
    finally:
        backend.close()
        run.finished_at = now_iso()
    if run.measurements and all(m.status == "failed" for m in run.measurements) \
            and run.status == "ok":
        run.status, run.error = "failed", run.measurements[-1].error
    return run


def _run_interleaved(backend: Backend, run: TargetRun, schedule: list[Job], protocol: Protocol,
                     progress: Progress | None) -> TargetRun:
    measure = getattr(backend, "measure_interleaved", None)
    try:
        if measure is None:
            raise UsageError("Interleaved runs are a host feature", backend.kind,
                             "Drop --interleave (phones run one benchmark_model at a time)")
        waited, timed_out = wait_until_cool(backend, protocol, None)
        before = _safe_thermal(backend)
        if progress is not None:
            estimate = len(schedule) * (protocol.min_seconds + protocol.warmup_seconds)
            progress(backend.target_id, 0, len(schedule), None, estimate)
        try:
            ms = measure(schedule, protocol)
        except MeasurementFailed as exc:
            ms = [Measurement.failed(job, str(exc)) for job in schedule]
        after = _safe_thermal(backend)
        for job, m in zip(schedule, ms):
            run.measurements.append(replace(m, thermal_before=before, thermal_after=after,
                                            wait_s=waited, wait_timed_out=timed_out))
            if progress is not None:
                progress(backend.target_id, job.order + 1, len(schedule), job, m)
        run.conditions_end = backend.conditions()
    finally:
        backend.close()
        run.finished_at = now_iso()
    return run


def run_targets(backends: Sequence[Backend], models: Sequence[ModelInfo],
                configs: Sequence[BenchConfig], protocol: Protocol, *,
                progress: Progress | None = None,
                cancel: threading.Event | None = None) -> list[TargetRun]:
    """One worker per target, concurrently (each device measures independently)."""
    if len(backends) == 1:
        return [run_target(backends[0], models, configs, protocol, progress=progress,
                           cancel=cancel)]
    pool = ThreadPoolExecutor(max_workers=len(backends), thread_name_prefix="target")
    futures = [pool.submit(run_target, b, models, configs, protocol, progress=progress,
                           cancel=cancel) for b in backends]
    try:
        runs = [f.result() for f in futures]
    except BaseException:  # Ctrl-C in the main thread: stop the workers between visits
        if cancel is not None:
            cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return runs
