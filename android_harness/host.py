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

import contextlib
import gc
import importlib.metadata as md
import os
import random
import time
from typing import Sequence

import numpy as np

from android_harness.errors import MeasurementFailed, UsageError
from android_harness.host_conditions import BackgroundMeter, host_conditions, rss_mb, thermal_zones
from android_harness.inputs import ModelInput, load_inputs
from android_harness.protocol import Backend, Job, Protocol
from android_harness.records import BenchConfig, Measurement, ModelInfo, now_iso
from pipeline.core.errors import QatError, first_line
from pipeline.core.records import RUNTIME_AUTO, Runtime
from pipeline.tflite import feeding
from pipeline.tflite.isolated import IsolatedInterpreter
from pipeline.tflite.runtime import make_interpreter, resolve_runtime
from pipeline.tflite.tflite_model import TFLiteModel

HOST_DELEGATES = ("cpu", "xnnpack")
# interpreter: the classic Interpreter API (what most Android apps call);
# compiled: LiteRT's CompiledModel API, the engine LiteRT's own Python benchmark
# (ai_edge_litert/tools/benchmark_litert_model.py) times - same model, a different per-call
# overhead (buffers looked up by signature name), which matters for ~10 us models.
ENGINES = ("interpreter", "compiled")


class _CompiledModel:
    """The CompiledModel API behind the two calls _Instance needs: set_tensor and invoke."""

    def __init__(self, path: str, threads: int):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.environment import Environment, EnvironmentOptions
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        env = Environment.create(options=EnvironmentOptions())
        opts = Options(hardware_accelerators=HardwareAccelerator(HardwareAccelerator.CPU),
                       cpu_options=CpuOptions(num_threads=threads))
        self.model = CompiledModel.from_file(path, environment=env, options=opts)
        self.sig = next(iter(self.model.get_signature_list()), "serving_default")
        self.in_details = self.model.get_input_tensor_details(self.sig)
        self.names = list(self.in_details)
        self.inputs = {n: self.model.create_input_buffer_by_name(self.sig, n)
                       for n in self.names}
        self.outputs = {n: self.model.create_output_buffer_by_name(self.sig, n)
                        for n in self.model.get_output_tensor_details(self.sig)}
        model, sig, ins, outs = self.model, self.sig, self.inputs, self.outputs
        # exactly the call benchmark_litert_model.py times
        self.invoke = lambda: model.run_by_name(sig, ins, outs)

    def get_input_details(self) -> list[dict]:
        return [{"index": k, "name": n, "shape": list(self.in_details[n]["shape"]),
                 "dtype": np.dtype(self.in_details[n]["dtype"])}
                for k, n in enumerate(self.names)]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self.inputs[self.names[index]].write(np.ascontiguousarray(value))


def random_input(shape: Sequence[int], dtype: np.dtype, rng: np.random.Generator,
                 high: int | None = None) -> np.ndarray:
    """Random data for one input; ``high``: integer ids that index a table (an Embedding)
    are drawn from [0, high) (pipeline/tflite/feeding.id_bounds)."""
    dtype = np.dtype(dtype)
    if high and dtype.kind in "iu":
        return rng.integers(0, high, shape).astype(dtype)
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

    def __init__(self, *, runtime: str | None = None, inputs: str | None = None,
                 engine: str = "interpreter"):
        super().__init__("host")
        if engine not in ENGINES:
            raise UsageError("Unknown host engine", engine, f"Use one of: {', '.join(ENGINES)}")
        if engine == "compiled" and runtime not in (None, RUNTIME_AUTO, Runtime.LITERT):
            raise UsageError(f"The compiled engine is part of {Runtime.LITERT.package}", runtime,
                             f"Use --runtime {Runtime.LITERT} (or {RUNTIME_AUTO}) with "
                             "--engine compiled")
        self.engine = engine
        self.runtime_name, _ = resolve_runtime(Runtime.LITERT if engine == "compiled"
                                               else runtime)
        self.inputs_spec = inputs
        self._inputs: dict[str, list[ModelInput]] = {}
        self._id_bounds: dict[str, dict[str, int]] = {}
        self._paths: dict[str, str] = {}

    def conditions(self) -> dict:
        return host_conditions()

    def tool_info(self) -> dict:
        package = Runtime(self.runtime_name).package
        try:
            version = md.version(package)
        except md.PackageNotFoundError:
            version = None
        name = ("LiteRT CompiledModel (run_by_name)" if self.engine == "compiled"
                else "LiteRT Python interpreter")
        return {"name": name, "engine": self.engine, "runtime": self.runtime_name,
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
            if self.engine == "compiled" and c.delegate != "xnnpack":
                raise UsageError("The compiled engine always uses LiteRT's CPU accelerator "
                                 "(XNNPACK)", f"--delegate {c.delegate}",
                                 "Use --delegate xnnpack, or --engine interpreter for builtin "
                                 "kernels")
            if c.core_mask and max(c.cores()) >= (os.cpu_count() or 1):
                raise UsageError("The core mask names cores this machine does not have",
                                 f"--core-mask {c.core_mask} on {os.cpu_count()} cores",
                                 "Use a mask within the host's cores")
        self._probe(models, max(c.threads for c in configs))
        for m in models:
            self._paths[m.label] = m.path
            try:  # load once up front so a broken model fails the run, not each visit
                if self.engine == "compiled":
                    _CompiledModel(m.path, 1)
                else:
                    make_interpreter(m.path, runtime=self.runtime_name).allocate_tensors()
            except QatError:
                raise
            except (ValueError, RuntimeError) as exc:
                raise MeasurementFailed("The interpreter cannot allocate the model", m.path,
                                        first_line(exc, 300))
            if self.inputs_spec:
                self._inputs[m.label] = load_inputs(self.inputs_spec, m.path)
            else:  # token ids stay inside their Embedding tables, by tensor and input name
                view = TFLiteModel.from_file(m.path)
                ids = feeding.id_bounds(view)
                self._id_bounds[m.label] = {
                    n: ids[t.index] for t, s in zip(view.inputs(), feeding.slots_of_model(view))
                    if t.index in ids for n in (t.name, s.key) if n}

    def _probe(self, models: Sequence[ModelInfo], threads: int) -> None:
        """Load, allocate and invoke each model once in a child process first: a crafted model
        that crashes LiteRT (found by fuzzing: an op code changed to SPLIT gives SIGSEGV)
        becomes a one-line error (exit 2) instead of killing this process. model_infos has
        already pre-checked the files' structure."""
        with IsolatedInterpreter(runtime=self.runtime_name, num_threads=threads) as child:
            for m in models:
                child.run(m.path, precheck=False, source=m.path)

    def measure(self, job: Job, protocol: Protocol) -> Measurement:
        return self._guarded([job], protocol, lambda: self._contiguous(job, protocol))[0]

    def measure_interleaved(self, jobs: Sequence[Job], protocol: Protocol) -> list[Measurement]:
        """All visits at once: one fresh interpreter per job, then time slices of
        ``protocol.slice_s`` in a seeded shuffled order per round until every job has its
        runs and seconds - each repeat samples the whole run's time span (see Protocol)."""
        return self._guarded(jobs, protocol, lambda: self._interleaved(jobs, protocol))

    def _guarded(self, jobs, protocol, fn) -> list[Measurement]:
        masks = {j.config.core_mask for j in jobs}
        if len(masks) > 1:
            raise UsageError("Interleaved runs need one core mask", sorted(map(str, masks)),
                             "Run the masks separately")
        mask = jobs[0].config
        old_affinity = os.sched_getaffinity(0) if mask.core_mask else None
        try:
            if mask.core_mask:
                os.sched_setaffinity(0, mask.cores())
            return fn()
        except (ValueError, RuntimeError) as exc:
            raise MeasurementFailed("The interpreter failed", f"{jobs[0].model.label} "
                                    f"{jobs[0].config.key}", first_line(exc, 300))
        finally:
            if old_affinity is not None:
                os.sched_setaffinity(0, old_affinity)

    def _contiguous(self, job: Job, protocol: Protocol) -> list[Measurement]:
        started, wall0 = now_iso(), time.monotonic()
        meter = BackgroundMeter()
        meter.start()
        rss0 = rss_mb()
        inst = _Instance(self, job, protocol)
        with _gc_paused():
            inst.run(time.perf_counter_ns() + int(protocol.min_seconds * 1e9), protocol.min_runs)
        rss_end = rss_mb()
        memory = {}
        if rss0 is not None:
            memory = {"init_mb": round(inst.rss_init - rss0, 4),
                      "overall_mb": round(rss_end - rss0, 4),
                      "source": "RSS delta of this process (/proc/self/statm)"}
        return [inst.measurement(started, time.monotonic() - wall0, memory, meter.stop())]

    def _interleaved(self, jobs: Sequence[Job], protocol: Protocol) -> list[Measurement]:
        started, wall0 = now_iso(), time.monotonic()
        meter = BackgroundMeter()
        meter.start()
        instances = []
        for job in jobs:  # built and warmed up one after the other, in schedule order
            rss0 = rss_mb()
            inst = _Instance(self, job, protocol)
            inst.memory = ({"init_mb": round(inst.rss_init - rss0, 4),
                            "source": "RSS delta while building this interpreter"}
                           if rss0 is not None else {})
            instances.append(inst)
        rng = random.Random(protocol.seed)
        need_ns = int(protocol.min_seconds * 1e9)
        cap_ns = int(protocol.max_seconds * 1e9)
        slice_ns = int(protocol.slice_s * 1e9)
        with _gc_paused():
            while any(i.busy_ns < need_ns or len(i.lat) < protocol.min_runs for i in instances):
                order = list(instances)
                rng.shuffle(order)
                for inst in order:
                    inst.run(time.perf_counter_ns() + slice_ns, 1)
                if all(i.busy_ns >= cap_ns for i in instances):
                    break
        background = meter.stop()
        wall = time.monotonic() - wall0
        return [i.measurement(started, wall, i.memory, background) for i in instances]


@contextlib.contextmanager
def _gc_paused():
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Instance:
    """One fresh interpreter for one job: built, fed, warmed up, then timed on demand."""

    def __init__(self, backend: HostBackend, job: Job, protocol: Protocol):
        pc = time.perf_counter_ns
        self.job, self.protocol = job, protocol
        cfg = job.config
        t0 = pc()
        if backend.engine == "compiled":
            interp = _CompiledModel(job.model.path, cfg.threads)
        else:
            interp = make_interpreter(job.model.path, runtime=backend.runtime_name,
                                      num_threads=cfg.threads,
                                      xnnpack=cfg.delegate == "xnnpack")
            interp.allocate_tensors()
        self.init_us = (pc() - t0) / 1e3
        self.engine = backend.engine
        self.rss_init = rss_mb()
        details = interp.get_input_details()
        real = backend._inputs.get(job.model.label)
        if real:  # by name: each interpreter input gets the array loaded for it
            by_name = [next((inp for inp in real if inp.answers_to(d.get("name", ""))), real[k])
                       for k, d in enumerate(details)]
            self.feeds = [[inp.batch(i) for i in range(inp.count)] for inp in by_name]
        else:  # one random sample per input, seeded per model x repeat (reproducible)
            rng = np.random.default_rng([protocol.seed, job.repeat,
                                         int(job.model.sha256[:8], 16)])
            bounds = backend._id_bounds.get(job.model.label, {})
            self.feeds = [[random_input(d["shape"], d["dtype"], rng, bounds.get(d["name"]))]
                          for d in details]
        self.indices = [d["index"] for d in details]
        self.set_tensor, self.invoke = interp.set_tensor, interp.invoke
        self.interp = interp
        self.n_feeds = max(len(f) for f in self.feeds)
        self.k = 0
        self.lat: list[int] = []
        self.busy_ns = 0
        self.memory: dict = {}
        max_end = pc() + int(protocol.max_seconds * 1e9)
        self.feed(0)
        t0 = pc()
        self.invoke()
        self.first_us = (pc() - t0) / 1e3
        self.warm = [self.first_us]
        warm_end = pc() + int(protocol.warmup_seconds * 1e9)
        while (len(self.warm) < protocol.warmup_runs or pc() < warm_end) and pc() < max_end:
            self.feed(len(self.warm))
            t0 = pc()
            self.invoke()
            self.warm.append((pc() - t0) / 1e3)

    def feed(self, k: int) -> None:
        if k == 0 or self.n_feeds > 1:
            for idx, values in zip(self.indices, self.feeds):
                self.set_tensor(idx, values[k % len(values)])

    def run(self, until_ns: int, min_runs: int) -> None:
        """Timed invokes until ``until_ns`` and at least ``min_runs`` of them (this call),
        bounded by --max-seconds of timed work in total."""
        pc, invoke, append = time.perf_counter_ns, self.invoke, self.lat.append
        cap = int(self.protocol.max_seconds * 1e9)
        n = 0
        while n < min_runs or pc() < until_ns:
            if self.n_feeds > 1:
                self.feed(self.k)
                self.k += 1
            t0 = pc()
            invoke()
            dt = pc() - t0
            append(dt)
            self.busy_ns += dt
            n += 1
            if self.busy_ns > cap:
                break

    def measurement(self, started: str, wall_s: float, memory: dict,
                    background: float | None) -> Measurement:
        job, cfg = self.job, self.job.config
        us = np.asarray(self.lat, dtype=np.float64) / 1e3
        return Measurement(
            job.model.label, cfg.key, job.repeat, job.order, started_at=started,
            wall_s=wall_s, latencies_us=us.round(3).tolist(), count=int(us.size),
            mean_us=float(us.mean()), std_us=float(us.std()), min_us=float(us.min()),
            max_us=float(us.max()), median_us=float(np.median(us)),
            p5_us=float(np.percentile(us, 5)), p95_us=float(np.percentile(us, 95)),
            init_us=self.init_us, first_us=self.first_us,
            warmup_avg_us=float(np.mean(self.warm)), warmup_count=len(self.warm),
            memory=memory, background_cpu=None if background is None else round(background, 3),
            delegation=({"delegate": "LiteRT CPU accelerator (XNNPACK)", "status": "compiled"}
                        if self.engine == "compiled" else
                        {"delegate": "XNNPACK", "status": "default"} if cfg.delegate == "xnnpack"
                        else {"delegate": None, "status": "builtin kernels"}))
