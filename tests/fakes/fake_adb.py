"""TEST DOUBLE: a fake ``adb`` executable for the android_harness tests (no phone needed).

It is not a mock of our code: it is a stand-in for the real ``adb`` + a phone, driven through
the same command line the harness uses with real hardware. What it keeps faithful:

* a device file system on disk per serial ($FAKE_ADB_ROOT/<serial>/fs): ``push`` copies into
  it (creating parents, keeping the mode), ``pull`` copies out, and ``shell`` runs the command
  string with the host's ``/bin/sh -c`` after mapping /data/local/tmp, /sys and /proc to that
  directory - so quoting mistakes break exactly as on a phone (a ``;`` in an unquoted name runs
  a second command, a space splits an argument);
* ``devices [-l]`` in adb's ``%-22s %s`` format, ``get-state``, ``wait-for-device``, ``-s`` and
  $ANDROID_SERIAL, and adb's own error messages for offline / unauthorized / missing devices;
* device tools on the shell's PATH: ``getprop`` ([key]: [value]), ``dumpsys battery``,
  ``dumpsys thermalservice`` (Android 10+ format), ``dumpsys package``, ``taskset``, ``am``,
  ``pm``, ``logcat``; sysfs CPU and thermal-zone files;
* a pushed file carrying the marker ``FAKE-TFLITE-BENCHMARK-MODEL`` after an ELF header acts as
  TFLite's benchmark_model when executed: fake_benchmark_model.py prints output in the real
  formats (see that file). Executing it checks existence, the exec bit and the ELF ABI against
  the device's, like Android's shell does.

Configuration (environment variables; "VALUE" applies to every device, "S1=V1;S2=V2" per serial):
  FAKE_ADB_ROOT            state directory (required)
  FAKE_ADB_DEVICES         "SERIAL[:STATE],..." attached devices (default FAKE0001:device);
                           STATE is device | offline | unauthorized
  FAKE_ADB_ABI             ro.product.cpu.abi (default arm64-v8a)
  FAKE_ADB_PRODUCT_MODEL   ro.product.model (default "Pixel 7"; tests put control bytes here)
  FAKE_ADB_CORES           number of CPUs (default 8: 4 little, 3 big, 1 prime)
  FAKE_ADB_THERMAL         hottest thermal-zone temperature (degC) on successive reads,
                           comma-separated, the last one repeats (default 36.5)
  FAKE_ADB_NO_THERMALSERVICE=1   dumpsys thermalservice answers "Can't find service"
  FAKE_ADB_NO_SHA256SUM=1  the device has no sha256sum
  FAKE_ADB_DISCONNECT_ON_RUN     N[,M...]: the N-th benchmark_model run on the device drops
                           the connection half-way (output truncated, device offline)
  FAKE_ADB_RECONNECT       1 (default): wait-for-device brings a dropped device back;
                           0: it never comes back (wait-for-device blocks)
  FAKE_ADB_APK_INSTALLED=1 the benchmark APK is already installed
  FAKE_ADB_LOG             append one JSON line per invocation (argv, serial) to this file
  FAKE_BM_*                read by fake_benchmark_model.py (latency, output format, ...)
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "adb"
MARKER = b"FAKE-TFLITE-BENCHMARK-MODEL"
APK_MARKER = b"FAKE-TFLITE-BENCHMARK-APK"
APK_PACKAGE = "org.tensorflow.lite.benchmark"
PY = [sys.executable, "-S"]


def env_for(name, serial, default=None):
    """FAKE_X=value for all devices, or FAKE_X='S1=v1;S2=v2' per serial."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    if "=" in raw:
        for part in raw.split(";"):
            k, _, v = part.partition("=")
            if k.strip() == serial:
                return v.strip()
        return default
    return raw


def root():
    r = os.environ.get("FAKE_ADB_ROOT")
    if not r:
        sys.stderr.write("fake adb: FAKE_ADB_ROOT is not set\n")
        sys.exit(2)
    return Path(r)


def attached():
    spec = os.environ.get("FAKE_ADB_DEVICES", "FAKE0001:device")
    out = []
    for item in spec.split(","):
        if item.strip():
            serial, _, state = item.strip().partition(":")
            out.append((serial, state or "device"))
    return out


# -- per-device state -----------------------------------------------------------------------
class Device:
    def __init__(self, serial, initial_state):
        self.serial = serial
        self.dir = root() / serial
        self.fs = self.dir / "fs"
        self.state_file = self.dir / "state.json"
        if not self.state_file.exists():
            self._create(initial_state)
        self.state = json.loads(self.state_file.read_text())

    def save(self):
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_file)

    @property
    def abi(self):
        return env_for("FAKE_ADB_ABI", self.serial, "arm64-v8a")

    def _create(self, initial_state):
        (self.fs / "data" / "local" / "tmp").mkdir(parents=True, exist_ok=True)
        cores = int(env_for("FAKE_ADB_CORES", self.serial, "8"))
        cpu = self.fs / "sys" / "devices" / "system" / "cpu"
        for i in range(cores):
            d = cpu / f"cpu{i}" / "cpufreq"
            d.mkdir(parents=True, exist_ok=True)
            khz = 1804800 if i < cores // 2 else 2419200 if i < cores - 1 else 2841600
            (d / "cpuinfo_max_freq").write_text(f"{khz}\n")
            (d / "scaling_governor").write_text("schedutil\n")
            if i:
                (cpu / f"cpu{i}" / "online").write_text("1\n")
        (cpu / "possible").write_text(f"0-{cores - 1}\n")
        for i, kind in enumerate(["cpu-0-0-usr", "cpu-1-0-usr", "gpu0-usr", "battery",
                                  "skin-therm"]):
            z = self.fs / "sys" / "class" / "thermal" / f"thermal_zone{i}"
            z.mkdir(parents=True, exist_ok=True)
            (z / "type").write_text(kind + "\n")
            (z / "temp").write_text("30000\n")
        (self.fs / "proc").mkdir(exist_ok=True)
        (self.fs / "proc" / "cpuinfo").write_text("Hardware\t: Fake SoC\n")
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"state": initial_state, "bm_runs": 0, "thermal_reads": 0, "logcat": []}
        if os.environ.get("FAKE_ADB_APK_INSTALLED") == "1":
            (self.dir / "apk_installed").write_text("1\n")
        self.state_file.write_text(json.dumps(state))

    def thermal_tick(self):
        """Advance the scripted temperature and write it to the zones."""
        seq = [float(v) for v in env_for("FAKE_ADB_THERMAL", self.serial, "36.5").split(",")]
        t = seq[min(self.state["thermal_reads"], len(seq) - 1)]
        self.state["thermal_reads"] += 1
        self.save()
        zones = sorted((self.fs / "sys" / "class" / "thermal").glob("thermal_zone*"))
        for k, z in enumerate(zones):
            (z / "temp").write_text(f"{int(round((t - 3.0 * k) * 1000))}\n")
        return t

    def props(self):
        sdk = env_for("FAKE_ADB_SDK", self.serial, "34")
        abilist = {"arm64-v8a": "arm64-v8a,armeabi-v7a,armeabi",
                   "armeabi-v7a": "armeabi-v7a,armeabi", "x86_64": "x86_64,x86"}.get(
            self.abi, self.abi)
        model = env_for("FAKE_ADB_PRODUCT_MODEL", self.serial, "Pixel 7")
        return {"ro.product.manufacturer": "Google", "ro.product.model": model,
                "ro.product.device": "panther", "ro.soc.manufacturer": "Google",
                "ro.soc.model": "GS201", "ro.board.platform": "gs201", "ro.hardware": "panther",
                "ro.build.version.release": "14", "ro.build.version.sdk": sdk,
                "ro.product.cpu.abi": self.abi, "ro.product.cpu.abilist": abilist,
                "ro.build.fingerprint": f"google/panther/panther:14/FAKE/{self.serial}:user"}


def device_state(dev):
    return dev.state["state"]


def die(msg, code=1):
    sys.stderr.write(msg.rstrip("\n") + "\n")
    sys.exit(code)


UNAUTHORIZED = ("error: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
                "Try 'adb kill-server' if that seems wrong.\n"
                "Otherwise check for a confirmation dialog on your device.")


def select(serial):
    devs = attached()
    if serial is None:
        if not devs:
            die("error: no devices/emulators found")
        if len(devs) > 1:
            die("error: more than one device/emulator")
        serial = devs[0][0]
    match = [d for d in devs if d[0] == serial]
    if not match:
        die(f"error: device '{serial}' not found")
    return Device(serial, match[0][1])


def require_online(dev, prefix="error: "):
    st = device_state(dev)
    if st == "offline":
        die(f"{prefix}device offline")
    if st == "unauthorized":
        die(UNAUTHORIZED if prefix == "error: " else prefix + UNAUTHORIZED[7:])


# -- host-side commands -----------------------------------------------------------------------
def cmd_devices(args):
    long = "-l" in args
    print("List of devices attached")
    for serial, initial in attached():
        st = device_state(Device(serial, initial))
        if not long:
            print(f"{serial}\t{st}")
            continue
        line = f"{serial:<22} {st} usb:1-{abs(hash(serial)) % 9 + 1}"
        if st == "device":
            line += " product:panther model:Pixel_7 device:panther"
        print(line + f" transport_id:{attached().index((serial, initial)) + 1}")
    print()


def cmd_get_state(dev):
    require_online(dev)
    print("device")


def cmd_wait(dev):
    while device_state(dev) != "device":
        if device_state(dev) == "offline" and os.environ.get("FAKE_ADB_RECONNECT", "1") == "1" \
                and dev.state.get("dropped"):
            time.sleep(0.05)
            dev.state["state"], dev.state["dropped"] = "device", False
            dev.save()
            break
        time.sleep(0.2)  # blocks like the real one until killed
        dev.state = json.loads(dev.state_file.read_text())


def to_fs(dev, remote):
    if not remote.startswith("/"):
        die(f"adb: error: remote path must be absolute: {remote}")
    return dev.fs / remote.lstrip("/")


def cmd_push(dev, args):
    require_online(dev, "adb: error: failed to get feature set: ")
    args = [a for a in args if not a.startswith("--sync")]
    if len(args) < 2:
        die("adb: usage: push [--sync] LOCAL... REMOTE")
    *locals_, remote = args
    for local in locals_:
        src = Path(local)
        if not src.is_file():
            die(f"adb: error: cannot stat '{local}': No such file or directory")
        dst = to_fs(dev, remote)
        if remote.endswith("/") or dst.is_dir():
            dst = dst / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        os.chmod(dst, src.stat().st_mode & 0o777)
        size = src.stat().st_size
        print(f"{local}: 1 file pushed, 0 skipped. 42.0 MB/s ({size} bytes in 0.001s)")


def cmd_pull(dev, args):
    require_online(dev, "adb: error: failed to get feature set: ")
    remote, local = args[0], args[1] if len(args) > 1 else "."
    src = to_fs(dev, remote)
    if not src.exists():
        die(f"adb: error: failed to stat remote object '{remote}': No such file or directory")
    dst = Path(local)
    if dst.is_dir():
        dst = dst / src.name
    shutil.copyfile(src, dst)
    print(f"{remote}: 1 file pulled, 0 skipped.")


def cmd_install(dev, args):
    require_online(dev, "adb: error: failed to get feature set: ")
    apk = Path([a for a in args if not a.startswith("-")][-1])
    print("Performing Streamed Install")
    if not apk.is_file() or APK_MARKER not in apk.read_bytes():
        die("adb: failed to install {}: Failure [INSTALL_PARSE_FAILED_NOT_APK: Failed to parse "
            "{}]".format(apk, apk))
    (dev.dir / "apk_installed").write_text("1\n")
    print("Success")


# -- device shell -----------------------------------------------------------------------------
_PATHS = re.compile(r"(?<![\w.~/-])/(data/local/tmp|sys|proc)(?=[/\s'\"]|$)")


def rewrite(dev, command):
    return _PATHS.sub(lambda m: f"{dev.fs}/{m.group(1)}", command)


def is_fake_binary(dev, token):
    if not token.startswith("/"):
        return False
    p = to_fs(dev, token)
    try:
        with open(p, "rb") as f:
            return MARKER in f.read(4096)
    except OSError:
        return False


BATTERY = ("Current Battery Service state:\n  AC powered: false\n  USB powered: true\n"
           "  Wireless powered: false\n  Max charging current: 500000\n  status: 2\n"
           "  health: 2\n  present: true\n  level: 81\n  scale: 100\n  voltage: 4123\n"
           "  temperature: 291\n  technology: Li-ion\n")


def tool_dir(dev):
    """Per-device tools put first on the shell's PATH. The frequent ones (getprop, dumpsys,
    pm, taskset) are small sh scripts, so a conditions read does not start Python thrice."""
    d = dev.dir / "bin"
    d.mkdir(exist_ok=True)
    cores = int(env_for("FAKE_ADB_CORES", dev.serial, "8"))
    props = "".join(f"[{k}]: [{v}]\n" for k, v in sorted(dev.props().items()))
    zone0 = dev.fs / "sys" / "class" / "thermal" / "thermal_zone0" / "temp"
    if os.environ.get("FAKE_ADB_NO_THERMALSERVICE") == "1":
        thermal = "echo \"Can't find service: thermalservice\""
    else:
        thermal = (f"t=$(cat '{zone0}'); "
                   "awk -v t=\"$t\" 'BEGIN { printf \"IsStatusOverride: false\\n"
                   "ThermalEventListeners:\\n\\tcallbacks: 1\\nThermal Status: 0\\n"
                   "Cached temperatures:\\n\\tTemperature{mValue=99.0, mType=0, mName=stale, "
                   "mStatus=3}\\nHAL Ready: true\\nHAL connection:\\n\\tThermalHAL 2.0 "
                   "connected: yes\\nCurrent temperatures from HAL:\\n\\tTemperature{mValue=%.1f,"
                   " mType=0, mName=CPU0, mStatus=0}\\n\\tTemperature{mValue=%.1f, mType=3, "
                   "mName=VIRTUAL-SKIN, mStatus=0}\\nCurrent cooling devices from HAL:\\n"
                   "\\tCoolingDevice{mValue=0, mType=2, mName=thermal-cpufreq-0}\\n\", t/1000, "
                   "t/1000-4 }'")
    apk = dev.dir / "apk_installed"
    scripts = {
        "getprop": f"""if [ $# -eq 0 ]; then printf '%s' '{props}'; else printf '%s' '{props}' \
| sed -n "s/^\\[$1\\]: \\[\\(.*\\)\\]$/\\1/p"; fi""",
        "dumpsys": f"""case "$1" in
battery) printf '%s' '{BATTERY}';;
thermalservice) {thermal};;
package) if [ "$2" = {APK_PACKAGE} ] && [ -f '{apk}' ]; then
  printf 'Packages:\\n  Package [{APK_PACKAGE}] (1a2b3c):\\n    versionCode=1\\n    versionName=2.16.1-fake\\n'; fi;;
*) echo "Can't find service: $1";;
esac""",
        "pm": f"""if [ "$1 $2" = "list packages" ] && [ -f '{apk}' ]; then echo package:{APK_PACKAGE}; fi""",
        "taskset": f"""mask=$1; shift
case "$mask" in ''|*[!0-9a-fA-Fx]*) echo "taskset: bad mask" >&2; exit 1;; esac
if [ $(( 0x${{mask#0x}} >> {cores} )) -ne 0 ]; then
  echo "taskset: sched_setaffinity: Invalid argument" >&2; exit 1; fi
exec "$@" """,
    }
    for name in ("am", "logcat"):
        scripts[name] = f'exec "{PY[0]}" -S "{LAUNCHER}" --fake-tool {name} "$@"'
    scripts["fake_bm_exec"] = f'exec "{PY[0]}" -S "{LAUNCHER}" --fake-benchmark-model "$@"'
    if os.environ.get("FAKE_ADB_NO_SHA256SUM") == "1":
        scripts["sha256sum"] = 'echo "/system/bin/sh: sha256sum: not found" >&2; exit 127'
    stale = d / "sha256sum"
    if "sha256sum" not in scripts and stale.exists():
        stale.unlink()
    for name, body in scripts.items():
        w = d / name
        text = "#!/bin/sh\n" + body + "\n"
        if not w.exists() or w.read_text() != text:
            w.write_text(text)
            w.chmod(0o755)
    return d


def shell_env(dev, extra=None):
    env = dict(os.environ)
    env["PATH"] = f"{tool_dir(dev)}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(FAKE_DEVICE_SERIAL=dev.serial, FAKE_DEVICE_FS=str(dev.fs),
               FAKE_DEVICE_ABI=dev.abi)
    env.update(extra or {})
    return env


def cmd_shell(dev, args):
    require_online(dev)
    args = [a for a in args if a not in ("-T", "-t", "-x", "-n")]
    command = " ".join(args)  # what real adb does before handing it to the device's sh -c
    extra = {}
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = []
    start = 2 if argv[:1] == ["taskset"] and len(argv) > 2 else 0
    runs_binary = len(argv) > start and is_fake_binary(dev, argv[start])
    if runs_binary:
        dev.state["bm_runs"] += 1
        dev.save()
        argv[start:start + 1] = ["fake_bm_exec", f"--fake-exec={argv[start]}"]
        command = shlex.join(argv)
        drops = [int(v) for v in env_for("FAKE_ADB_DISCONNECT_ON_RUN", dev.serial, "").split(",")
                 if v.strip()]
        if dev.state["bm_runs"] in drops:
            extra["FAKE_BM_DISCONNECT"] = "1"
        extra["FAKE_BM_RUN_INDEX"] = str(dev.state["bm_runs"])
    if re.search(r"/sys/class/thermal", command):
        dev.thermal_tick()
    proc = subprocess.run(["/bin/sh", "-c", rewrite(dev, command)], cwd=dev.fs,
                          env=shell_env(dev, extra))
    if extra.get("FAKE_BM_DISCONNECT"):
        dev.state = json.loads(dev.state_file.read_text())
        dev.state["state"], dev.state["dropped"] = "offline", True
        dev.save()
        sys.exit(255)  # the connection is gone: no exit status came back
    sys.exit(proc.returncode)


# -- device tools (run inside the fake shell) -------------------------------------------------
def tool(name, args):
    dev = Device(os.environ["FAKE_DEVICE_SERIAL"], "device")
    if name == "logcat":
        if "-c" in args:
            dev.state["logcat"] = []
            dev.save()
        elif "-d" in args:
            for line in dev.state["logcat"]:
                print(line)
    elif name == "am":
        if args[:1] != ["start"]:
            die("am: unsupported in the fake")
        component = args[args.index("-n") + 1] if "-n" in args else ""
        if not (dev.dir / "apk_installed").exists() or not component.startswith(APK_PACKAGE):
            print(f"Starting: Intent {{ cmp={component} }}")
            print(f"Error type 3\nError: Activity class {{{component}}} does not exist.")
            return 1
        flags = args[args.index("args") + 1].split() if "args" in args else []
        print(f"Starting: Intent {{ cmp={component} (has extras) }}")
        out = subprocess.run([*PY, str(LAUNCHER), "--fake-benchmark-model", *flags],
                             capture_output=True, text=True,
                             env={**os.environ, "FAKE_BM_APK": "1",
                                  "FAKE_BM_FORMAT": "logcat"})
        dev.state = json.loads(dev.state_file.read_text())
        pid = 4242  # logcat -v brief: "I/tflite  ( 4242): message"
        dev.state["logcat"] += [f"I/tflite  ({pid:5d}): {line}" for line in out.stdout.splitlines()]
        dev.state["logcat"] += [f"E/tflite  ({pid:5d}): {line}" for line in out.stderr.splitlines()]
        dev.save()
        print("Status: ok\nLaunchState: COLD\nActivity: " + component + "\nTotalTime: 123\n"
              "WaitTime: 125\nComplete")
    return 0


def main(argv):
    if argv[:1] == ["--fake-tool"]:
        return tool(argv[1], argv[2:])
    if argv[:1] == ["--fake-benchmark-model"]:
        import fake_benchmark_model
        return fake_benchmark_model.main(argv[1:])
    serial = os.environ.get("ANDROID_SERIAL")
    args = list(argv)
    while args and args[0] in ("-s", "-t", "-H", "-P", "-d", "-e"):
        opt = args.pop(0)
        if opt in ("-d", "-e"):
            continue
        value = args.pop(0) if args else None
        if opt == "-s":
            serial = value
    if os.environ.get("FAKE_ADB_LOG"):
        with open(os.environ["FAKE_ADB_LOG"], "a") as f:
            f.write(json.dumps({"argv": argv, "serial": serial}) + "\n")
    if not args:
        die("adb: usage: no command specified")
    cmd, rest = args[0], args[1:]
    if cmd == "version":
        print("Android Debug Bridge version 1.0.41\nVersion 35.0.1-fake\nInstalled as "
              + str(Path(__file__).resolve()))
        return 0
    if cmd in ("start-server", "kill-server", "reconnect"):
        return 0
    if cmd == "devices":
        cmd_devices(rest)
        return 0
    dev = select(serial)
    if cmd == "get-state":
        cmd_get_state(dev)
    elif cmd in ("wait-for-device", "wait-for-any-device"):
        cmd_wait(dev)
    elif cmd == "push":
        cmd_push(dev, rest)
    elif cmd == "pull":
        cmd_pull(dev, rest)
    elif cmd == "install":
        cmd_install(dev, rest)
    elif cmd == "shell":
        cmd_shell(dev, rest)
    elif cmd == "logcat":
        require_online(dev)
        os.environ.update(FAKE_DEVICE_SERIAL=dev.serial)
        return tool("logcat", rest)
    else:
        die(f"adb: unknown command {cmd}")
    return 0
