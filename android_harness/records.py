"""Shared small types of the harness: configurations, model identities, measurements.

Frozen dataclasses where the value is an identity (a config, a model), a plain dataclass for a
measurement being filled in; all serialise with ``to_dict`` into the results JSON.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from android_harness.benchmark_tool import DELEGATES
from android_harness.errors import UsageError
from pipeline.tflite.tflite_model import TFLiteModel, read_file

# Interpreter threads per run: LiteRT (and benchmark_model) start one OS thread each, and
# 100000 of them crashed the host run with SIGSEGV; no phone or host CPU uses more than this.
MAX_THREADS = 256


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class BenchConfig:
    """One configuration of the runtime: threads, delegate, CPU core mask (taskset)."""

    threads: int
    delegate: str = "xnnpack"
    core_mask: str | None = None  # hex, taskset style, e.g. "f0" = cores 4-7

    def __post_init__(self):
        if not 1 <= self.threads <= MAX_THREADS:
            raise UsageError(f"Thread counts must be at least 1 and at most {MAX_THREADS}",
                             self.threads, "Pass e.g. --threads 1,4")
        if self.delegate not in DELEGATES:
            raise UsageError("Unknown delegate", self.delegate, f"Use one of: {', '.join(DELEGATES)}")
        if self.core_mask is not None:
            try:
                if int(self.core_mask, 16) <= 0:
                    raise ValueError
            except ValueError:
                raise UsageError("The core mask must be a non-zero hex number (taskset style)",
                                 self.core_mask, "Pass e.g. --core-mask f0 for cores 4-7")

    @property
    def key(self) -> str:
        return f"t{self.threads}/{self.delegate}" + (f"/mask={self.core_mask}"
                                                       if self.core_mask else "")

    def cores(self) -> list[int]:
        mask = int(self.core_mask or "0", 16)
        return [i for i in range(mask.bit_length()) if mask >> i & 1]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    label: str
    path: str
    sha256: str
    size_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def model_infos(paths: Sequence[str | os.PathLike]) -> list[ModelInfo]:
    """Label each model by its file stem, adding parent folders until labels are unique.

    Each model is read the bounded way and pre-checked structurally (pipeline.tflite.tflite_model:
    a regular file of at most 2 GiB, the TFL3 header, every offset and index), so a FIFO, a
    device, a huge or a crafted file is refused (exit 2) before anything loads or pushes it."""
    resolved, digests = [], {}
    for p in paths:
        path = Path(p)
        if not os.path.lexists(path):
            raise UsageError("Model file does not exist", os.fspath(p), "Check the path")
        content = read_file(path)
        TFLiteModel.from_bytes(content, source=os.fspath(p))
        digests[path] = (hashlib.sha256(content).hexdigest(), len(content))
        resolved.append(path)
    if len({p.resolve() for p in resolved}) != len(resolved):
        raise UsageError("The same model was given twice", [os.fspath(p) for p in resolved],
                         "Pass each .tflite once")
    depth = 1
    while True:
        labels = ["/".join((*p.resolve().parent.parts[-(depth - 1):], p.stem) if depth > 1
                           else (p.stem,)) for p in resolved]
        if len(set(labels)) == len(labels):
            break
        depth += 1
    return [ModelInfo(label, os.fspath(p), *digests[p]) for label, p in zip(labels, resolved)]


@dataclass
class Measurement:
    """One visit: one model x config x repeat on one target. Latencies in microseconds."""

    model: str
    config: str
    repeat: int
    order: int
    status: str = "ok"  # 'ok' | 'failed'
    error: str | None = None
    started_at: str | None = None
    wall_s: float | None = None
    attempts: int = 1
    cooldown_s: float = 0.0
    wait_s: float = 0.0  # waiting to cool down (--max-temp) or for quiet (--wait-quiet)
    wait_timed_out: bool = False
    background_cpu: float | None = None  # CPUs' worth of other processes during the visit
    thermal_before: dict | None = None
    thermal_after: dict | None = None
    latencies_us: list[float] | None = None  # per invoke, where the backend sees them
    count: int = 0
    mean_us: float | None = None
    std_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    median_us: float | None = None
    p5_us: float | None = None
    p95_us: float | None = None
    init_us: float | None = None
    first_us: float | None = None
    warmup_avg_us: float | None = None
    warmup_count: int | None = None
    memory: dict = field(default_factory=dict)
    delegation: dict | None = None
    op_profile: list | None = None
    raw_log: str | None = None

    @classmethod
    def failed(cls, job, error: str, attempts: int = 1) -> "Measurement":
        return cls(job.model.label, job.config.key, job.repeat, job.order, status="failed",
                   error=error, attempts=attempts, started_at=now_iso())

    def to_dict(self, with_latencies: bool = True) -> dict:
        d = asdict(self)
        if not with_latencies:
            d.pop("latencies_us")
        return d
