"""android-harness: on-device latency over adb, and the same protocol on the host.

    android-harness devices
    android-harness bench artifacts/digits_cnn/*.tflite --serial R58M1234 --threads 1,4
    android-harness bench artifacts/digits_cnn/*.tflite --all --delegate xnnpack,gpu
    android-harness host  artifacts/digits_cnn/*.tflite --threads 1,2

Exit codes: 0 every measurement succeeded; 1 a measurement or a device failed (or a result was
unstable with --fail-on-unstable) - the table says which; 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import secrets
import signal
import sys
import threading
import traceback
from pathlib import Path

from android_harness import benchmark_tool as bt
from android_harness import protocol as harness_protocol  # tests stand in for run_targets
from android_harness import results
from android_harness.adb import Adb, find_adb
from android_harness.conditions import Device
from android_harness.device import DeviceBackend, run_cleanups
from android_harness.errors import (EXIT_BAD_INPUT, EXIT_GATE_FAILED, DeviceUnavailable,
                                    HarnessError, UsageError, printable)
from android_harness.host import HostBackend
from android_harness.protocol import Protocol
from android_harness.records import BenchConfig, model_infos, now_iso
from pipeline.core.errors import EXIT_INTERRUPTED, QatError
from pipeline.core.records import RUNTIME_AUTO, Runtime, Variant


def harness_version() -> str:
    """The installed distribution's version (the harness ships inside qat-deploy)."""
    import importlib.metadata as md
    try:
        return md.version("qat-deploy")
    except md.PackageNotFoundError:
        return "0+unknown"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL.tflite", help="models to measure")
    g = p.add_argument_group("configurations (every combination is measured)")
    g.add_argument("--threads", type=_int_list, default=[1], metavar="N[,N...]",
                   help="interpreter threads, a list (default: 1)")
    g.add_argument("--delegate", type=_str_list, default=["xnnpack"], metavar="D[,D...]",
                   help="cpu (builtin kernels), xnnpack, gpu, nnapi (default: xnnpack)")
    g.add_argument("--core-mask", default=None, metavar="HEX",
                   help="pin to these cores, taskset style (e.g. f0 = cores 4-7)")
    g = p.add_argument_group("protocol")
    g.add_argument("--warmup-runs", type=int, default=10, help="warm-up invokes (default 10)")
    g.add_argument("--warmup-seconds", type=float, default=0.5,
                   help="and at least this long (default 0.5)")
    g.add_argument("--min-runs", type=int, default=50, help="timed invokes per repeat, at least "
                   "(default 50)")
    g.add_argument("--min-seconds", type=float, default=1.0,
                   help="and at least this long (default 1)")
    g.add_argument("--max-seconds", type=float, default=150.0,
                   help="stop a repeat after this long (default 150)")
    g.add_argument("--repeats", type=int, default=5, help="repeats, in shuffled order "
                   "(default 5)")
    g.add_argument("--cooldown", type=float, default=None, metavar="SECONDS",
                   help="pause between runs (default 30 on a device, 0 on the host)")
    g.add_argument("--max-temp", type=float, default=None, metavar="DEGC",
                   help="before each run, wait until the hottest thermal zone is below this")
    g.add_argument("--thermal-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="give up waiting for --max-temp after this long (default 300)")
    g.add_argument("--thermal-poll", type=float, default=5.0, metavar="SECONDS",
                   help="read the temperatures this often while waiting (default 5)")
    g.add_argument("--seed", type=int, default=0, help="seed of the shuffle, random inputs "
                   "and bootstrap (default 0)")
    g.add_argument("--inputs", default=None, metavar="FILE.npz[:KEY]",
                   help="real inputs instead of random ones")
    g.add_argument("--stability-cv", type=float, default=0.05, metavar="FRACTION",
                   help="max CV of the per-repeat medians for 'stable' (default 0.05)")
    g.add_argument("--fail-on-unstable", action="store_true",
                   help="exit 1 when a result is unstable")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default artifacts/harness/RUN_ID)")
    g.add_argument("--baseline", default=Variant.FLOAT32.value, metavar="MODEL",
                   help=f"model the ratios refer to (default {Variant.FLOAT32.value})")
    g.add_argument("--json", action="store_true", help="print the results JSON on stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    g.add_argument("-v", "--verbose", action="store_true", help="log what is done")
    g.add_argument("--debug", action="store_true", help="log adb commands, show tracebacks")


def _adb_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adb", default=None, metavar="PATH", help="adb executable (default: $ADB, "
                   "PATH, $ANDROID_HOME/platform-tools)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="android-harness", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See docs/android-harness.md for the on-device workflow.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {harness_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("devices", help="list attached devices with their state and info")
    _adb_opt(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--debug", action="store_true", help="log adb commands, show tracebacks")
    p = sub.add_parser("bench", help="measure on Android devices with benchmark_model")
    _common(p)
    g = p.add_argument_group("devices")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--serial", "-s", default=None, help="device serial (default "
                   "$ANDROID_SERIAL, else the only attached device)")
    x.add_argument("--all", action="store_true", help="every attached device, concurrently")
    _adb_opt(g)
    g.add_argument("--benchmark-model", default=None, metavar="PATH",
                   help="TFLite's Android benchmark_model binary (default $BENCHMARK_MODEL_PATH)")
    g.add_argument("--apk", action="store_true",
                   help="use the installed benchmark APK instead of the binary")
    g.add_argument("--install-apk", default=None, metavar="APK",
                   help="install this benchmark APK first (implies --apk)")
    g.add_argument("--op-profiling", action="store_true", help="per-op profile table")
    g.add_argument("--require-full-delegation", action="store_true",
                   help="fail a run when the delegate leaves ops on the CPU")
    g.add_argument("--peak-memory", action="store_true",
                   help="report peak memory (a sampling thread; may perturb timings)")
    g.add_argument("--reconnect-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="wait for a disconnected device this long, once (default 60)")
    g.add_argument("--keep-device-files", action="store_true",
                   help="leave the work directory on the device")
    p = sub.add_parser("host", help="the same protocol on this machine (LiteRT interpreter)")
    _common(p)
    p.add_argument("--runtime", default=None, choices=Runtime.names(tensorflow=False),
                   help=f"interpreter package (default: {RUNTIME_AUTO})")
    p.add_argument("--engine", default="interpreter", choices=["interpreter", "compiled"],
                   help="interpreter: the Interpreter API (default); compiled: LiteRT's "
                   "CompiledModel API, the engine benchmark_litert_model.py times")
    p.add_argument("--contiguous", action="store_true",
                   help="one repeat after the other, as on a phone (default: all repeats "
                   "interleaved in shuffled time slices, robust to a host whose speed drifts)")
    p.add_argument("--slice-ms", type=float, default=20.0, metavar="MS",
                   help="time slice of the interleaved mode (default 20)")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="CPUS",
                   help="before each run, wait until other processes use less than this many "
                   "CPUs (e.g. 0.2; bounded by --thermal-timeout)")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# -----------------------------------------------------------------------------------------------
def _configs(args):
    return [BenchConfig(t, d, args.core_mask) for t in args.threads for d in args.delegate]


def _protocol(args):
    return Protocol(warmup_runs=args.warmup_runs, warmup_seconds=args.warmup_seconds,
                    min_runs=args.min_runs, min_seconds=args.min_seconds,
                    max_seconds=args.max_seconds, repeats=args.repeats, cooldown_s=args.cooldown,
                    max_temp_c=args.max_temp, thermal_timeout_s=args.thermal_timeout,
                    thermal_poll_s=args.thermal_poll,
                    max_background_cpu=getattr(args, "wait_quiet", None),
                    interleave=args.command == "host" and not args.contiguous,
                    slice_s=getattr(args, "slice_ms", 20.0) / 1000.0,
                    reconnect_timeout_s=getattr(args, "reconnect_timeout", 60.0), seed=args.seed,
                    stability_cv=args.stability_cv,
                    op_profiling=getattr(args, "op_profiling", False),
                    require_full_delegation=getattr(args, "require_full_delegation", False),
                    peak_memory=getattr(args, "peak_memory", False))


def _say(text: str = "", *, file=None, end: str = "\n", one_line: bool = False) -> None:
    """print() for anything that may carry adb/device/benchmark_model text: non-printable
    characters are escaped (see errors.printable); ``one_line`` escapes newlines too."""
    print(printable(text, keep="" if one_line else "\n\t"), file=file or sys.stdout, end=end,
          flush=file is sys.stderr)


class _SafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _out_dir(args, run_id: str) -> Path:
    """The output directory, created now: a --out that names a file (or cannot be created)
    fails before anything is measured, not after."""
    out_dir = Path(args.out or Path("artifacts") / "harness" / run_id)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError("--out names an existing file, not a directory", os.fspath(out_dir),
                         "Pass a new or existing directory")
    except NotADirectoryError:
        raise UsageError("--out is inside a file, not a directory", os.fspath(out_dir),
                         "Pass a directory path whose parents are directories")
    except OSError as exc:
        raise UsageError("--out cannot be created", f"{out_dir} ({exc.strerror})",
                         "Pass a writable directory")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError("--out is not writable", os.fspath(out_dir), "Pass a writable directory")
    return out_dir


def _progress(quiet: bool):
    lock = threading.Lock()

    def report(target, i, n, job, m):
        if quiet:
            return
        if job is None:  # interleaved: one notice before everything is measured at once
            _say(f"[{target}] measuring {n} repeats interleaved, about {m:.0f} s",
                 file=sys.stderr, one_line=True)
            return
        what = (f"p50 {m.median_us:.2f} us, {m.count} invokes" if m.status == "ok" and
                m.median_us is not None else f"mean {m.mean_us:.2f} us, {m.count} invokes"
                if m.status == "ok" and m.mean_us is not None else f"FAILED: {m.error}")
        with lock:
            _say(f"[{target} {i}/{n}] {job.model.label} {job.config.key} repeat "
                 f"{job.repeat + 1}: {what}", file=sys.stderr, one_line=True)
    return report


def _pick_serials(args, adb) -> list[str]:
    serial = args.serial or (None if args.all else os.environ.get("ANDROID_SERIAL"))
    if serial:
        return [serial]
    entries = adb.devices()
    if args.all:
        if not entries:
            raise DeviceUnavailable("No Android device is attached", "adb devices -l is empty",
                                    "Connect a phone with USB debugging enabled", state="none")
        return [e.serial for e in entries]
    if not entries:
        raise DeviceUnavailable("No Android device is attached", "adb devices -l is empty",
                                "Connect a phone with USB debugging enabled", state="none")
    if len(entries) > 1:
        raise UsageError("More than one device is attached",
                         ", ".join(f"{e.serial} ({e.state})" for e in entries),
                         "Pass --serial SERIAL or --all")
    return [entries[0].serial]


def _run(args, command: str) -> int:
    run_id = (_dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-"
              + secrets.token_hex(2))
    protocol, configs = _protocol(args), _configs(args)
    models = model_infos(args.models)
    out_dir = _out_dir(args, run_id)
    if command == "host":
        runtime = None if args.runtime in (None, RUNTIME_AUTO) else args.runtime
        backends = [HostBackend(runtime=runtime, inputs=args.inputs, engine=args.engine)]
    else:
        adb = Adb(find_adb(args.adb))
        apk = Path(args.install_apk) if args.install_apk else args.apk
        if isinstance(apk, Path) and not apk.is_file():
            raise UsageError("The benchmark APK does not exist", os.fspath(apk),
                             "Check --install-apk")
        binary = None if apk else bt.resolve_binary(args.benchmark_model)
        backends = [DeviceBackend(adb.for_serial(s), run_id=run_id, binary=binary, apk=apk,
                                  inputs=args.inputs, log_dir=out_dir / "logs",
                                  keep_files=args.keep_device_files)
                    for s in _pick_serials(args, adb)]
    started = now_iso()
    cancel = threading.Event()
    runs = harness_protocol.run_targets(backends, models, configs, protocol,
                                        progress=_progress(args.quiet), cancel=cancel)
    doc = results.build(run_id=run_id, command=command, started_at=started,
                        finished_at=now_iso(), protocol=protocol, models=models,
                        configs=configs, runs=runs, baseline=args.baseline,
                        harness_version=harness_version())
    if len(runs) == 1 and runs[0].status == "failed" and not runs[0].measurements:
        # Nothing was measured on the only target: report it as the error it is.
        raise runs[0].exception
    paths = results.write(doc, out_dir)
    _say(json.dumps(doc, indent=1) if args.json else results.markdown(doc), end="")
    _say(f"results: {paths['json']}", file=sys.stderr)
    bad = any(t["status"] != "ok" for t in doc["targets"]) or any(
        r["status"] != "ok" for r in doc["results"])
    unstable = any((r.get("stability") or {}).get("verdict") == "unstable"
                   for r in doc["results"])
    return EXIT_GATE_FAILED if bad or (args.fail_on_unstable and unstable) else 0


def _devices(args) -> int:
    adb = Adb(find_adb(args.adb))
    rows = []
    for e in adb.devices():
        row = e.to_dict()
        if e.state == "device":
            try:
                dev = Device(adb.for_serial(e.serial))
                row.update(dev.conditions())
            except HarnessError as exc:
                row["error"] = str(exc)
        else:
            row["hint"] = adb.for_serial(e.serial).unavailable(e.state, "").fix
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))  # json escapes control characters itself
        return 0
    if not rows:
        print("No devices attached (adb devices -l is empty).")
        return 0
    print("| serial | state | device | Android | ABI | SoC | cores | battery | thermal |")
    print("|---|---|---|---|---|---|--:|---|---|")
    for r in rows:
        if r["state"] != "device":
            _say(f"| {r['serial']} | {r['state']} | {r.get('hint') or ''} | | | | | | |",
                 one_line=True)
            continue
        bat = r.get("battery") or {}
        ts = r.get("thermal_service") or {}
        hottest = max((r.get("thermal") or {}).values(), default=None)
        _say(f"| {r['serial']} | {r['state']} | {r.get('manufacturer')} {r.get('model')} | "
              f"{r.get('android_release')} (SDK {r.get('sdk')}) | {r.get('abi')} | "
              f"{r.get('soc')} | {r.get('cores')} | "
              f"{bat.get('level', '-')} %, {bat.get('temperature_c', '-')} degC | "
              f"{ts.get('status_name', '-')}"
              + (f", hottest zone {hottest:.1f} degC" if hottest is not None else "") + " |",
             one_line=True)
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if getattr(args, "debug", False) else
                        logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # adb output may be logged: escape it
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(_SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM becomes KeyboardInterrupt so the device work directories are removed.
        previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        if args.command == "devices":
            return _devices(args)
        return _run(args, args.command)
    except KeyboardInterrupt:
        run_cleanups()
        print("interrupted: device work directories removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (HarnessError, QatError) as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        _say(f"error: {exc}", file=sys.stderr, one_line=True)
        return getattr(exc, "exit_code", EXIT_BAD_INPUT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def console_main() -> None:
    sys.exit(main(parse_args()))
