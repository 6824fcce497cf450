"""TEST DOUBLE: stands in for TFLite's Android ``benchmark_model`` inside the fake adb.

It does not run the model; it prints what the real tool prints, line for line, in the formats
of tensorflow/lite/tools/benchmark (benchmark_model.cc, benchmark_tflite_model.cc,
tools/logging.h, tsl stats_calculator), with latencies drawn from a seeded distribution:

* ``INFO: ``-prefixed log lines, the two ``Running benchmark for at least ...`` phases, each
  followed by a ``tsl::Stat`` line (``count=.. first=.. curr=.. min=.. max=.. avg=.. std=..``,
  integers except avg, std truncated to an integer as ``Stat<int64_t>`` does; ``avg`` printed
  like C++ iostreams, 6 significant digits), the ``Inference timings in us`` line and the
  memory lines;
* delegate lines (``Explicitly applied X delegate ...``) and ``Disallowed CPU fallback
  detected.`` with ``--require_full_delegation`` when the delegate takes only part of the graph;
* ``--enable_op_profiling``: the profile summarizer's tab-separated tables, with the model's
  real operators when pipeline.tflite.tflite_model can read it;
* the real error lines for a missing or invalid model, unknown flags, and bad input files.

Environment (set by the tests; FAKE_DEVICE_* and FAKE_BM_RUN_INDEX are set by the fake adb):
  FAKE_BM_LATENCY_US   "stem=us,stem=us,*=us": mean latency per model file stem with 1 thread
                       and XNNPACK (default: 40 us + 1 us per 64 bytes of model file)
  FAKE_BM_JITTER       relative spread of the latencies (default 0.03)
  FAKE_BM_SEED         base seed (default 0)
  FAKE_BM_FORMAT       modern (default; with p5/median/p95) | classic (no percentiles) |
                       bare (no "INFO: " prefixes, older builds) | legacy (TF 1.x "Average
                       inference timings" line) | garbage (another tool's output) |
                       logcat (the APK's logcat messages, no severity prefix)
  FAKE_BM_DELEGATE_KERNELS  delegate kernels for gpu/nnapi (1 = whole graph; default 1)
  FAKE_BM_SLEEP_S      sleep this long before the regular runs (interrupt tests)
  FAKE_BM_DISCONNECT=1 stop after the warm-up phase and exit 255 (connection dropped)
"""

import math
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KNOWN = {"graph", "num_threads", "warmup_runs", "warmup_min_secs", "num_runs", "min_secs",
         "max_secs", "use_xnnpack", "use_gpu", "use_nnapi", "enable_op_profiling",
         "require_full_delegation", "report_peak_memory_footprint", "input_layer",
         "input_layer_shape", "input_layer_value_files", "run_delay", "verbose"}
ELF_ABI = {(3, 1): "x86", (40, 1): "armeabi-v7a", (62, 2): "x86_64", (183, 2): "arm64-v8a"}
DTYPE_BYTES = {"FLOAT32": 4, "INT8": 1, "UINT8": 1, "INT32": 4, "INT64": 8, "FLOAT16": 2,
               "INT16": 2, "BOOL": 1}


def fmt(v):
    """C++ ostream default formatting of a double (precision 6, %g semantics)."""
    return "%g" % v


class Out:
    def __init__(self, style):
        self.style = style

    def log(self, msg, sev="INFO"):
        # The APK logs through __android_log_print: the severity is logcat's, not a prefix.
        prefix = "" if self.style in ("bare", "legacy", "logcat") else f"{sev}: "
        stream = sys.stderr if sev in ("ERROR", "FATAL") else sys.stdout
        stream.write(prefix + msg + "\n")
        stream.flush()


def device_path(p):
    fs = os.environ.get("FAKE_DEVICE_FS")
    return "/" + os.path.relpath(p, fs) if fs and p.startswith(fs) else p


def check_exec(arg):
    """What Android's shell does before running the file."""
    path = arg.split("=", 1)[1]
    host = path if os.path.exists(path) else os.path.join(os.environ.get("FAKE_DEVICE_FS", "/"),
                                                          path.lstrip("/"))
    shown = device_path(path)
    if not os.path.isfile(host):
        sys.stderr.write(f"/system/bin/sh: {shown}: not found\n")
        sys.exit(127)
    if not os.access(host, os.X_OK):
        sys.stderr.write(f"/system/bin/sh: {shown}: can't execute: Permission denied\n")
        sys.exit(126)
    head = open(host, "rb").read(20)
    abi = ELF_ABI.get((int.from_bytes(head[18:20], "little"), head[4]))
    if abi != os.environ.get("FAKE_DEVICE_ABI", "arm64-v8a"):
        bits = 64 if head[4] == 2 else 32
        sys.stderr.write(f"/system/bin/sh: {shown}: not executable: {bits}-bit ELF file\n")
        sys.exit(126)


def stat_line(values, percentiles):
    """tsl::Stat<int64_t>::OutputToStream (+ StatWithPercentiles)."""
    n = len(values)
    if n == 0:
        return "count=0"
    lo, hi = min(values), max(values)
    if lo == hi:
        s = f"count={n} curr={values[-1]}" + ("(all same)" if n > 1 else "")
    else:
        avg = sum(values) / n
        var = sum(v * v for v in values) / n - avg * avg
        s = (f"count={n} first={values[0]} curr={values[-1]} min={lo} max={hi} avg={fmt(avg)} "
             f"std={int(math.sqrt(max(var, 0.0)))}")
    if percentiles:
        def pct(p):
            srt = sorted(values)
            return srt[-1] if p == 100 else srt[n * p // 100]
        s += f" p5={pct(5)} median={pct(50)} p95={pct(95)}"
    return s


def model_info(path):
    sys.path.insert(0, str(REPO))
    try:
        from pipeline.tflite.tflite_model import TFLiteModel
        return TFLiteModel.from_file(path)
    except Exception:
        return None


def main(argv):
    style = os.environ.get("FAKE_BM_FORMAT", "modern")
    out = Out(style)
    if argv and argv[0].startswith("--fake-exec="):
        check_exec(argv[0])
        argv = argv[1:]
    flags = {}
    unknown = []
    for a in argv:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            (flags.__setitem__(k, v) if k in KNOWN else unknown.append(a))
        else:
            unknown.append(a)
    out.log("STARTING!")
    if unknown:
        out.log("Unconsumed cmdline flags: " + " ".join(unknown), "ERROR")
        out.log("Benchmarking failed.", "ERROR")
        return 1
    if style == "garbage":
        # Output of some other tool or build: nothing the parser knows.
        print("LiteRT bench 9.9 | model ok\nlatency_ms: 1.23 +- 0.04\n{\"p50\": 1.2}")
        return 0
    graph = flags.get("graph", "")
    if not graph:
        out.log("Please specify the name of your TF Lite input file with --graph", "ERROR")
        return 1
    b = lambda k, d="false": flags.get(k, d).lower() in ("1", "true")
    threads = int(flags.get("num_threads", "-1"))
    warm_runs, num_runs = int(flags.get("warmup_runs", "1")), int(flags.get("num_runs", "50"))
    warm_secs, min_secs = float(flags.get("warmup_min_secs", "0.5")), float(flags.get("min_secs", "1"))
    max_secs = float(flags.get("max_secs", "150"))
    out.log("Log parameter values verbosely: [0]")
    out.log(f"Min num runs: [{num_runs}]")
    out.log(f"Num threads: [{threads}]")
    out.log(f"Min warmup runs: [{warm_runs}]")
    out.log(f"Graph: [{device_path(graph)}]")
    if b("enable_op_profiling"):
        out.log("Enable op profiling: [1]")
    out.log(f"#threads used for CPU inference: [{threads}]")
    delegate = "GPU" if b("use_gpu") else "NNAPI" if b("use_nnapi") else None
    xnnpack = flags.get("use_xnnpack", "true").lower() in ("1", "true")
    out.log(f"Use xnnpack: [{int(xnnpack)}]")
    if not os.path.isfile(graph):
        out.log(f"Could not open '{device_path(graph)}'.", "ERROR")
        out.log(f"Failed to mmap model {device_path(graph)}", "ERROR")
        return 1
    data = open(graph, "rb").read()
    if data[4:8] != b"TFL3":
        out.log("The model is not a valid Flatbuffer buffer", "ERROR")
        out.log(f"Failed to mmap model {device_path(graph)}", "ERROR")
        return 1
    out.log(f"Loaded model {device_path(graph)}")
    model = model_info(graph) if flags.get("input_layer") or b("enable_op_profiling") else None
    if flags.get("input_layer") and model is not None:
        names = flags["input_layer"].split(",")
        files = dict(item.replace("::", "\0").split(":", 1)
                     for item in flags.get("input_layer_value_files", "").split(",") if item)
        files = {k.replace("\0", ":"): v.replace("\0", ":") for k, v in files.items()}
        for t in model.inputs():
            if t.name not in names:
                out.log(f"Cannot find the corresponding input_layer name({t.name}) in "
                        f"--input_layer as {flags['input_layer']}", "FATAL")
                return 134
            want = math.prod(d if d > 0 else 1 for d in t.shape) * DTYPE_BYTES.get(t.dtype, 4)
            f = files.get(t.name)
            if f is None or not os.path.isfile(f):
                out.log(f"Failed to read the input_layer_value_file:{device_path(f or '')}",
                        "FATAL")
                return 134
            if os.path.getsize(f) != want:
                out.log(f"The size of {device_path(f)} is {os.path.getsize(f)} bytes. It should "
                        f"be {want} bytes.", "FATAL")
                return 134
    if xnnpack and delegate is None:
        out.log("Created TensorFlow Lite XNNPACK delegate for CPU.")
    kernels = int(os.environ.get("FAKE_BM_DELEGATE_KERNELS", "1"))
    if delegate:
        out.log("Going to apply 1 delegates one after another.")
        if kernels == 1:
            out.log(f"Explicitly applied {delegate} delegate, and the model graph will be "
                    "completely executed by the delegate.")
        else:
            if b("require_full_delegation"):
                out.log("Disallowed CPU fallback detected.", "ERROR")
                out.log("Benchmarking failed.", "ERROR")
                return 1
            out.log(f"Explicitly applied {delegate} delegate, and the model graph will be "
                    f"partially executed by the delegate w/ {kernels} delegate kernels.")
    elif xnnpack:
        out.log("Explicitly applied XNNPACK delegate, and the model graph will be completely "
                "executed by the delegate.")
    stem = Path(graph).stem
    table = dict(kv.split("=", 1) for kv in os.environ.get("FAKE_BM_LATENCY_US", "").split(",")
                 if "=" in kv)
    base = float(table.get(stem, table.get("*", 40.0 + len(data) / 64.0)))
    base *= {None: 1.0 if xnnpack else 1.6, "GPU": 0.5, "NNAPI": 0.7}[delegate]
    base /= max(1, threads) ** 0.5
    seed = f"{os.environ.get('FAKE_BM_SEED', '0')}/{os.environ.get('FAKE_BM_RUN_INDEX', '0')}/{stem}"
    rng = random.Random(seed)
    jitter = float(os.environ.get("FAKE_BM_JITTER", "0.03"))
    draw = lambda: max(1, int(round(base * rng.lognormvariate(0.0, jitter))))
    init_us = int(base * 3 + 2000)
    out.log(f"The input model file size (MB): {fmt(len(data) / 1e6)}")
    out.log(f"Initialized session in {fmt(init_us / 1e3)}ms.")
    pct = style in ("modern", "logcat")

    def phase(runs, secs):
        out.log(f"Running benchmark for at least {runs} iterations and at least {fmt(secs)} "
                f"seconds but terminate if exceeding {fmt(max_secs)} seconds.")
        n = min(200000, max(runs, math.ceil(secs * 1e6 / base) if secs > 0 else 0),
                max(1, int(max_secs * 1e6 / base)))
        return n

    n_warm = phase(warm_runs, warm_secs)
    warm = [int(base * 1.3)] + [draw() for _ in range(n_warm - 1)] if n_warm else []
    out.log(stat_line(warm, pct) + "\n")
    if os.environ.get("FAKE_BM_DISCONNECT") == "1":
        return 255
    sleep = float(os.environ.get("FAKE_BM_SLEEP_S", "0"))
    end = time.monotonic() + sleep
    while time.monotonic() < end:
        time.sleep(0.05)
    n_reg = phase(num_runs, min_secs)
    reg = [draw() for _ in range(n_reg)]
    out.log(stat_line(reg, pct) + "\n")
    w_avg = sum(warm) / len(warm) if warm else float("nan")
    r_avg = sum(reg) / len(reg)
    if style == "legacy":
        out.log(f"Average inference timings in us: Warmup: {fmt(w_avg)}, Init: {init_us}, "
                f"Inference: {fmt(r_avg)}")
        return 0
    out.log(f"Inference timings in us: Init: {init_us}, First inference: "
            f"{warm[0] if warm else 0}, Warmup (avg): {fmt(w_avg)}, Inference (avg): {fmt(r_avg)}")
    out.log("Note: as the benchmark tool itself affects memory footprint, the following is only "
            "APPROXIMATE to the actual memory footprint of the model at runtime. Take the "
            "information at your discretion.")
    out.log(f"Memory footprint delta from the start of the tool (MB): init={fmt(len(data) / 2**20 + 1.5)} "
            f"overall={fmt(len(data) / 2**20 + 4.25)}")
    if b("report_peak_memory_footprint"):
        out.log(f"Overall peak memory footprint (MB) via periodic monitoring: "
                f"{fmt(len(data) / 2**20 + 6.5)}")
    if b("enable_op_profiling"):
        profile(out, model, r_avg, n_reg)
    if os.environ.get("FAKE_BM_APK") == "1":
        out.log(f"Average inference timings in us: Warmup: {fmt(w_avg)}, Init: {init_us}, "
                f"Inference: {fmt(r_avg)}Overall max resident set size = 12.5 MB", "ERROR")
    return 0


def _field(value, width):
    return "\t" + (f"{value:.3f}" if isinstance(value, float) else str(value)).rjust(width)


def profile(out, model, avg_us, runs):
    """ProfilingListener::OnBenchmarkEnd -> stats_calculator.cc tables (one log message, so
    only its first line carries the INFO: prefix)."""
    ops = ([op.opcode for op in model.main.operators] if model is not None
           else ["CONV_2D", "FULLY_CONNECTED", "SOFTMAX"])
    share = [1.0 / len(ops)] * len(ops)
    head = (_field("[node type]", 24) + _field("[first]", 9) + _field("[avg ms]", 9)
            + _field("[%]", 8) + _field("[cdf%]", 8) + _field("[mem KB]", 10)
            + _field("[times called]", 9) + "\t[Name]")
    lines = ["============================== Run Order ==============================", head]
    cdf = 0.0
    for i, (op, s) in enumerate(zip(ops, share)):
        cdf += 100 * s
        ms = avg_us * s / 1000
        lines.append(_field(op, 24) + _field(ms, 9) + _field(ms, 9) + _field(100 * s, 7) + "%"
                     + _field(cdf, 7) + "%" + _field(0.0, 10) + _field(1, 9)
                     + f"\t[op {i} output]:{i}")
    lines += ["", "Number of nodes executed: %d" % len(ops),
              "============================== Summary by node type "
              "==============================",
              _field("[Node type]", 24) + _field("[count]", 9) + _field("[avg ms]", 10)
              + _field("[avg %]", 11) + _field("[cdf %]", 11) + _field("[mem KB]", 10)
              + _field("[times called]", 10)]
    counts = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    cdf = 0.0
    for op, c in counts.items():
        pct = 100.0 * c / len(ops)
        cdf += pct
        lines.append(_field(op, 24) + _field(c, 9) + _field(avg_us * c / len(ops) / 1000, 10)
                     + _field(pct, 10) + "%" + _field(cdf, 10) + "%" + _field(0.0, 10)
                     + _field(c, 9))
    lines += ["", f"Timings (microseconds): count={runs} first={int(avg_us)} curr={int(avg_us)} "
              f"min={int(avg_us)} max={int(avg_us)} avg={fmt(avg_us)} std=0",
              "Memory (bytes): count=0", f"{len(ops)} nodes observed", ""]
    out.log("Operator-wise Profiling Info for Regular Benchmark Runs:\n" + "\n".join(lines))
