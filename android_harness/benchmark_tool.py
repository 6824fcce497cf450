"""TFLite's ``benchmark_model``: where it comes from, its flags, and a parser for its output.

The output formats come from the TensorFlow sources (tensorflow/lite/tools/benchmark/):
- benchmark_model.cc ``BenchmarkLoggingListener::OnBenchmarkEnd``: the line
  ``Inference timings in us: Init: I, First inference: F, Warmup (avg): W, Inference (avg): A``
  and the memory lines ``Memory footprint delta from the start of the tool (MB): init=.. overall=..``
  and ``Overall peak memory footprint (MB) via periodic monitoring: ..``;
- ``BenchmarkModel::Run`` prints one ``tsl::Stat`` per phase (warm-up, then regular runs):
  ``count=N first=.. curr=.. min=.. max=.. avg=.. std=..``, or ``count=N curr=X(all same)``, or
  ``count=0``; ``StatWithPercentiles`` (newer builds) appends `` p5=.. median=.. p95=..``;
- tools/logging.h prefixes lines with ``INFO: `` / ``WARN: `` / ``ERROR: `` (older builds print
  no prefix; the benchmark APK logs to logcat with tag ``tflite``);
- the APK's JNI listener adds ``Average inference timings in us: Warmup: W, Init: I,
  Inference: A`` (also the only timing line of TF 1.13-2.1 builds);
- older builds, each parsed (one test per format): TF 1.10-1.12 print ``Average inference
  timings in us: Warmup: W, Init: I, no stats: A``; the first contrib/lite tool (TF 1.8/1.9)
  printed ``Initialized session in 0.0123s`` (seconds) and ``Average inference timings in us:
  A , Warmup: W, ``. ``Initialized session in X ms`` (``ms.`` since 2.x) gives the init time
  when the timings line has none;
- benchmark_tflite_model.cc: the delegate lines ``Explicitly applied X delegate, and the model
  graph will be completely|partially executed ...`` and, with ``--require_full_delegation``,
  ``Disallowed CPU fallback detected.``; with ``--enable_op_profiling`` the profile summarizer
  prints ``Operator-wise Profiling Info for Regular Benchmark Runs:`` followed by tab-separated
  tables (stats_calculator.cc; older builds have an extra ``[start]`` column).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from android_harness.errors import AbiMismatchError, BenchmarkToolError, OutputParseError

BENCHMARK_MODEL_ENV = "BENCHMARK_MODEL_PATH"
DELEGATES = ("cpu", "xnnpack", "gpu", "nnapi")
APK_PACKAGE = "org.tensorflow.lite.benchmark"
APK_ACTIVITY = f"{APK_PACKAGE}/.BenchmarkModelActivity"
NIGHTLY = ("https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/"
           "lite/tools/nightly/latest/")
# Android ABI -> name of the prebuilt nightly binary (LiteRT "Performance measurement" page).
PREBUILT = {"arm64-v8a": "android_aarch64_benchmark_model",
            "armeabi-v7a": "android_arm_benchmark_model",
            "x86_64": "android_x86_64_benchmark_model",
            "x86": "android_x86_benchmark_model"}
# ELF e_machine -> Android ABI (System V gABI: EM_386=3, EM_ARM=40, EM_X86_64=62,
# EM_AARCH64=183); EI_CLASS must agree (1 = 32-bit, 2 = 64-bit).
_ELF_ABI = {(3, 1): "x86", (40, 1): "armeabi-v7a", (62, 2): "x86_64", (183, 2): "arm64-v8a"}


# ---------------------------------------------------------------------------------------------
# The binary
# ---------------------------------------------------------------------------------------------
def resolve_binary(flag: str | None) -> Path:
    """The benchmark_model path from --benchmark-model or $BENCHMARK_MODEL_PATH, checked."""
    value = flag or os.environ.get(BENCHMARK_MODEL_ENV)
    if not value:
        raise BenchmarkToolError(
            "No benchmark_model binary given", f"--benchmark-model unset and ${BENCHMARK_MODEL_ENV} "
            "unset", f"Download it (e.g. {NIGHTLY}{PREBUILT['arm64-v8a']}) and pass "
            f"--benchmark-model PATH or set {BENCHMARK_MODEL_ENV}; see docs/android-harness.md")
    path = Path(value).expanduser()
    if not path.is_file():
        raise BenchmarkToolError("The benchmark_model binary does not exist", str(path),
                                 "Check the path given to --benchmark-model / "
                                 f"{BENCHMARK_MODEL_ENV}")
    return path


def elf_abi(path: str | os.PathLike) -> str:
    """The Android ABI an ELF executable was built for."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise BenchmarkToolError("The benchmark_model file is not an ELF executable",
                                 f"{path} (starts with {head[:4]!r})",
                                 "Download the Android binary, not the .apk or a web page")
    ei_class, ei_data = head[4], head[5]
    machine = int.from_bytes(head[18:20], "little" if ei_data == 1 else "big")
    abi = _ELF_ABI.get((machine, ei_class))
    if abi is None:
        raise BenchmarkToolError("The benchmark_model binary is not for an Android ABI",
                                 f"{path} (ELF machine {machine}, class {ei_class})",
                                 "Use one of: " + ", ".join(PREBUILT.values()))
    return abi


def check_abi(binary: str | os.PathLike, device_abi: str, serial: str) -> str:
    """Raise AbiMismatchError unless the binary matches ro.product.cpu.abi."""
    abi = elf_abi(binary)
    if abi != device_abi:
        want = PREBUILT.get(device_abi, f"a {device_abi} build")
        raise AbiMismatchError(
            "The benchmark_model binary does not match the device ABI",
            f"{os.fspath(binary)} is {abi}, device {serial} ro.product.cpu.abi={device_abi}",
            f"Use {want} ({NIGHTLY}{want})" if device_abi in PREBUILT else f"Use {want}")
    return abi


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------
def delegate_flags(delegate: str) -> list[str]:
    """XNNPACK is applied by default since TF 2.3, so 'cpu' must turn it off explicitly."""
    return {"cpu": ["--use_xnnpack=false"], "xnnpack": ["--use_xnnpack=true"],
            "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"]}[delegate]


def _secs(v: float) -> str:
    return f"{v:g}"


def build_flags(graph: str, *, threads: int, delegate: str, warmup_runs: int,
                warmup_seconds: float, min_runs: int, min_seconds: float, max_seconds: float,
                op_profiling: bool = False, require_full_delegation: bool = False,
                peak_memory: bool = False, inputs: list[tuple[str, tuple[int, ...], str]] = ()
                ) -> list[str]:
    """benchmark_model flags (without the binary), one list element per flag."""
    flags = [f"--graph={graph}", f"--num_threads={threads}", f"--warmup_runs={warmup_runs}",
             f"--warmup_min_secs={_secs(warmup_seconds)}", f"--num_runs={min_runs}",
             f"--min_secs={_secs(min_seconds)}", f"--max_secs={_secs(max_seconds)}",
             *delegate_flags(delegate)]
    if op_profiling:
        flags.append("--enable_op_profiling=true")
    if require_full_delegation:
        flags.append("--require_full_delegation=true")
    if peak_memory:
        flags.append("--report_peak_memory_footprint=true")
    if inputs:
        for name, _, _ in inputs:
            if "," in name:
                raise BenchmarkToolError(
                    "benchmark_model cannot take an input whose name contains ','", name,
                    "Rename the input tensor or run without --inputs (random inputs)")
        flags += ["--input_layer=" + ",".join(n for n, _, _ in inputs),
                  "--input_layer_shape=" + ":".join(",".join(str(d) for d in s)
                                                    for _, s, _ in inputs),
                  # ':' separates name and file; a ':' inside a name is escaped as '::'
                  # (benchmark_tflite_model.h, SplitInputLayerNameAndValueFile).
                  "--input_layer_value_files=" + ",".join(
                      f"{n.replace(':', '::')}:{p}" for n, _, p in inputs)]
    return flags


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
_PREFIX = re.compile(r"^(?:INFO|WARN|WARNING|ERROR|FATAL|VERBOSE): ?")
# logcat -v brief/threadtime/tag prefixes, e.g. "I/tflite  ( 123): " or
# "01-02 03:04:05.678  1234  1250 I tflite  : "
_LOGCAT = re.compile(r"^(?:\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+\S+\s*:\s?"
                     r"|[VDIWEF]/[^(:]+(?:\(\s*\d+\))?:\s?)")
# Every generation's timing line: "[Average i|I]nference timings in us:" then "Key: value"
# items in any order (TF 1.8: the average first, without a key).
_TIMINGS_LINE = re.compile(r"(?:Average )?[Ii]nference timings in us:\s*(.*)")
_TIMING_LEAD = re.compile(rf"\s*({_NUM})\s*(?:,|$)")
_TIMING_ITEM = re.compile(rf"([A-Za-z][A-Za-z ]*?(?: \(avg\))?)\s*:\s*({_NUM})")
_TIMING_KEYS = {"init": "init_us", "first inference": "first_us", "warmup": "warmup_avg_us",
                "warmup (avg)": "warmup_avg_us", "inference": "inference_avg_us",
                "inference (avg)": "inference_avg_us", "no stats": "inference_avg_us"}
_INIT_SESSION = re.compile(rf"Initialized session in ({_NUM}) ?(ms|s)\b")
_STAT = re.compile(r"^count=(\d+)(.*)$")
_KV = re.compile(rf"(\w+)=({_NUM})")
_MEM = re.compile(rf"Memory footprint delta from the start of the tool \(MB\): "
                  rf"init=({_NUM}) overall=({_NUM})")
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})")
_SIZE = re.compile(rf"The input model file size \(MB\): ({_NUM})")
_APPLIED = re.compile(r"Explicitly applied (.+?) delegate, and the model graph will be "
                      r"(completely|partially) executed by the delegate(?: w/ (\d+) delegate "
                      r"kernels)?")
_NOT_APPLIED = re.compile(r"Though (.+?) delegate is explicitly applied, the model graph will "
                          r"not be executed by the delegate")
FALLBACK_MESSAGE = "Disallowed CPU fallback detected."
PROFILE_HEADER = "Operator-wise Profiling Info for Regular Benchmark Runs:"


def _num(text: str) -> float | None:
    """A number as C++ iostreams print it; 'nan'/'-nan' (an empty Stat's avg) -> None."""
    v = float(text.replace("-nan", "nan"))
    return None if math.isnan(v) else v


@dataclass(frozen=True)
class RunStats:
    """One ``tsl::Stat`` line; values in microseconds."""

    count: int
    first: float | None = None
    curr: float | None = None
    min: float | None = None
    max: float | None = None
    avg: float | None = None
    std: float | None = None
    p5: float | None = None
    median: float | None = None
    p95: float | None = None

    @classmethod
    def parse(cls, count: str, rest: str) -> "RunStats":
        values = {k: _num(v) for k, v in _KV.findall(rest)}
        n = int(count)
        if "(all same)" in rest or (n == 1 and "min" not in values and "curr" in values):
            c = values.get("curr")  # every run took the same time
            values.update(first=c, min=c, max=c, avg=c, std=0.0)
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(count=n, **known)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ToolReport:
    """What one benchmark_model run printed, parsed."""

    inference: RunStats | None = None
    warmup: RunStats | None = None
    init_us: float | None = None
    first_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    memory_init_mb: float | None = None
    memory_overall_mb: float | None = None
    memory_peak_mb: float | None = None
    model_size_mb: float | None = None
    delegation: dict | None = None
    fallback_detected: bool = False
    op_profile: list[dict] = field(default_factory=list)
    op_summary: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.inference is not None and self.inference.count > 0


def _clean(text: str) -> list[tuple[str, bool]]:
    """(line without logcat/severity prefix, had an ERROR/FATAL prefix) per line."""
    out = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = _LOGCAT.sub("", raw, count=1)
        m = _PREFIX.match(line)
        out.append((line[m.end():] if m else line,
                    bool(m) and m.group(0).startswith(("ERROR", "FATAL"))))
    return out


def _split_row(line: str) -> list[str]:
    cells = [c.strip() for c in (line.split("\t") if "\t" in line else re.split(r"\s{2,}", line))]
    return [c for c in cells if c != ""]


def _parse_table(lines: list[str], start: int) -> tuple[list[dict], int]:
    """Rows of a stats_calculator table whose header line is ``lines[start]``."""
    header = [h.strip("[]").strip().lower() for h in _split_row(lines[start])]
    rows, i = [], start + 1
    while i < len(lines) and lines[i].strip() and not lines[i].startswith("="):
        cells = _split_row(lines[i])
        if len(cells) >= len(header):
            # The last column (name) may contain the column separator; keep it whole.
            cells = cells[:len(header) - 1] + [" ".join(cells[len(header) - 1:])]
            row = {}
            for key, cell in zip(header, cells):
                v = cell.rstrip("%")
                try:
                    row[key] = float(v) if key not in ("node type", "name") else cell
                except ValueError:
                    row[key] = cell
            rows.append(row)
        i += 1
    return rows, i


def parse_output(text: str) -> ToolReport:
    """Parse benchmark_model output (stdout+stderr, or the APK's logcat).

    Raises OutputParseError, quoting the first lines, when neither a timing line nor a stats
    line is present.
    """
    cleaned = _clean(text)
    lines = [line for line, _ in cleaned]
    rep = ToolReport()
    session_init = None
    stats: list[RunStats] = []
    in_profile = False
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if m := _STAT.match(line):
            stats.append(RunStats.parse(m.group(1), m.group(2)))
        elif m := _TIMINGS_LINE.search(line):
            _parse_timings(m.group(1), rep)
        elif m := _INIT_SESSION.search(line):
            value = _num(m.group(1))
            session_init = None if value is None else value * (1e3 if m.group(2) == "ms" else 1e6)
        elif m := _MEM.search(line):
            rep.memory_init_mb, rep.memory_overall_mb = _num(m.group(1)), _num(m.group(2))
        elif m := _PEAK.search(line):
            rep.memory_peak_mb = _num(m.group(1))
        elif m := _SIZE.search(line):
            rep.model_size_mb = _num(m.group(1))
        elif m := _APPLIED.search(line):
            full = m.group(2) == "completely"
            rep.delegation = {"delegate": m.group(1), "status": "full" if full else "partial",
                              "delegate_kernels": 1 if full else int(m.group(3) or 0)}
        elif m := _NOT_APPLIED.search(line):
            rep.delegation = {"delegate": m.group(1), "status": "none", "delegate_kernels": 0}
        elif FALLBACK_MESSAGE in line:
            rep.fallback_detected = True
            rep.errors.append(line)
        elif PROFILE_HEADER in line:
            in_profile = True
        elif in_profile and line.startswith("=") and "Run Order" in line and not rep.op_profile:
            rep.op_profile, i = _parse_table(lines, i + 1)
            continue
        elif in_profile and line.startswith("=") and "Summary by node type" in line \
                and not rep.op_summary:
            rep.op_summary, i = _parse_table(lines, i + 1)
            continue
        elif cleaned[i][1] or _is_error(line):
            rep.errors.append(line)
        i += 1
    if rep.init_us is None:  # the timings line of this version has no Init
        rep.init_us = session_init
    _assign_stats(rep, stats, text)
    return rep


def _assign_stats(rep: ToolReport, stats: list[RunStats], text: str) -> None:
    """Warm-up and inference statistics from the stat lines, in run order: warm-up first, then
    the regular runs (profile tables print their own "Timings (microseconds): count=..." lines,
    which do not start with count=). Raises when the run died or printed nothing usable."""
    finished = rep.inference_avg_us is not None
    if len(stats) >= 2:
        rep.warmup, rep.inference = stats[-2], stats[-1]
    elif len(stats) == 1 and finished:
        rep.inference = stats[0]
    elif len(stats) == 1:  # only the warm-up phase was printed: the run died part-way
        rep.warmup = stats[0]
        raise BenchmarkToolError("benchmark_model stopped after the warm-up phase",
                                 (rep.errors or [_last_lines(text)])[0].rstrip("."),
                                 "Rerun with --debug to see its full output")
    if rep.inference is None and not finished:
        if rep.errors:
            raise BenchmarkToolError("benchmark_model failed", rep.errors[0].rstrip("."),
                                     "Rerun with --debug to see its full output")
        raise OutputParseError("benchmark_model output could not be parsed",
                               _first_lines(text), "Check the binary runs on the device "
                               "(adb shell PATH --help) and rerun with --debug for the full output")
    if rep.inference is None:  # timing line only (legacy APK): a summary without spread
        rep.inference = RunStats(count=0, avg=rep.inference_avg_us)


def _parse_timings(rest: str, rep: ToolReport) -> None:
    """The items of a timings line (any generation) into ``rep``; unknown keys (TensorFlow's
    own benchmark_model: ``with stats``) are ignored."""
    if m := _TIMING_LEAD.match(rest):  # TF 1.8: "A , Warmup: W, "
        rep.inference_avg_us = _num(m.group(1))
        rest = rest[m.end():]
    for key, value in _TIMING_ITEM.findall(rest):
        field_name = _TIMING_KEYS.get(key.strip().lower())
        if field_name:
            setattr(rep, field_name, _num(value))


_ERROR_PATTERNS = ("Failed to ", "Benchmarking failed", "Could not open", "not a valid Flatbuffer", "not found",
                   "Permission denied", "not executable", "Aborted", "Segmentation fault")


def _is_error(line: str) -> bool:
    return any(p in line for p in _ERROR_PATTERNS)


def _last_lines(text: str, n: int = 2) -> str:
    lines = [l.strip() for l in text.replace("\r", "").split("\n") if l.strip()]
    return " | ".join(lines[-n:]) or "no output at all"


def _first_lines(text: str, n: int = 3, width: int = 200) -> str:
    lines = [l.strip() for l in text.replace("\r", "").split("\n") if l.strip()]
    if not lines:
        return "no output at all"
    quoted = " | ".join(lines[:n])
    return repr(quoted[:width] + ("..." if len(quoted) > width else ""))
