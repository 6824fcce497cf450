"""adb transport (pattern from IREE's Android benchmark scripts).

- Host side: argument lists only, never a shell string (``subprocess`` without ``shell=True``).
- Device side: ``adb shell`` joins its arguments with spaces and hands them to the device's
  ``sh -c``, so every device command is built as a list and joined with ``shlex.join`` into one
  argument: file names with spaces, quotes or ``;`` reach the device as one word.
- ``adb push``/``pull`` use the sync protocol (no device shell), so their paths are passed as is.
- A failing command whose message looks like a transport error is confirmed with
  ``adb get-state`` and raised as DeviceUnavailable (the caller may wait and retry once);
  anything else is an AdbError.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from pipeline.core.artifacts import sha256_file
from android_harness.errors import AdbError, AdbNotFoundError, DeviceUnavailable

log = logging.getLogger("android_harness.adb")

# The one device work area; each run gets DEVICE_ROOT/<run-id> and removes it at the end.
DEVICE_ROOT = PurePosixPath("/data/local/tmp/android_harness")
ADB_ENV = "ADB"
INSTALL_HINT = ("Install Android platform-tools (https://developer.android.com/tools/releases/"
                "platform-tools, or `sudo apt-get install adb` on Debian/Ubuntu), put adb on "
                f"PATH, or pass --adb PATH / set ${ADB_ENV}")
DEFAULT_TIMEOUT_S = 120.0

# Messages adb prints when the transport, not the command, failed (adb transport.cpp /
# commandline.cpp): "device 'X' not found", "device offline", "device unauthorized.",
# "no devices/emulators found", "error: closed", "protocol fault", "device still authorizing".
_TRANSPORT = re.compile(r"device '[^']*' not found|device not found|device offline|"
                        r"no devices/emulators found|device unauthorized|still authorizing|"
                        r"still connecting|error: closed|protocol fault|connection reset",
                        re.IGNORECASE)
_STATE_FIXES = {
    "offline": "Reconnect the USB cable or run `adb reconnect`; check `adb devices -l`",
    "unauthorized": "Unlock the phone and accept the 'Allow USB debugging?' dialog, then "
                    "rerun (`adb kill-server` if no dialog appears)",
    "authorizing": "Wait for the device to finish authorizing and rerun",
    "not found": "Check `adb devices -l` and the serial passed to --serial",
    "no permissions": "Fix the udev rules for the device (see "
                      "https://developer.android.com/studio/run/device)",
}


def find_adb(explicit: str | None = None) -> str:
    """Path of the adb executable: --adb, $ADB, PATH, then $ANDROID_HOME/platform-tools."""
    if explicit:
        path = shutil.which(explicit) or (explicit if os.path.isfile(explicit) else None)
        if not path or not os.access(path, os.X_OK):
            raise AdbNotFoundError("The adb executable given does not exist or is not "
                                   "executable", explicit, INSTALL_HINT)
        return path
    candidates = [os.environ.get(ADB_ENV), shutil.which("adb")]
    for var in ("ANDROID_HOME", "ANDROID_SDK_ROOT"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "platform-tools", "adb"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise AdbNotFoundError("adb was not found", "not on PATH, $ADB and $ANDROID_HOME unset",
                           INSTALL_HINT)


@dataclass(frozen=True)
class DeviceEntry:
    """One line of ``adb devices -l``."""

    serial: str
    state: str
    usb: str | None = None
    product: str | None = None
    model: str | None = None
    device: str | None = None
    transport_id: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


_KEYS = ("product", "model", "device", "transport_id")


def parse_devices(text: str) -> list[DeviceEntry]:
    """Parse ``adb devices -l``: ``"%-22s %s"`` (serial, state) then ``usb:..``,
    ``product:..``, ``model:..``, ``device:..`` and ``transport_id:N`` (adb transport.cpp).
    The state may contain spaces ("no permissions (...)"), the serial cannot."""
    out = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith(("List of devices", "*", "adb server")):
            continue
        serial, _, rest = line.replace("\t", " ").partition(" ")
        tokens = rest.split()
        info: dict = {}
        while tokens and ":" in tokens[-1] and tokens[-1].split(":", 1)[0] in _KEYS:
            k, v = tokens.pop().split(":", 1)
            info[k] = v
        if tokens and re.match(r"^(usb:|\d+-[\d.]+$)", tokens[-1]):
            info["usb"] = tokens.pop().removeprefix("usb:")
        out.append(DeviceEntry(serial, " ".join(tokens) or "unknown", **info))
    return out


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + (("\n" + self.stderr) if self.stderr else "")


class Adb:
    """One adb executable bound (optionally) to one device serial."""

    def __init__(self, executable: str, serial: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S):
        self.executable = executable
        self.serial = serial
        self.timeout = timeout

    def for_serial(self, serial: str) -> "Adb":
        return Adb(self.executable, serial, timeout=self.timeout)

    # -- running ----------------------------------------------------------------------------
    def argv(self, args: Sequence[str]) -> list[str]:
        base = [self.executable] + (["-s", self.serial] if self.serial else [])
        return base + [os.fspath(a) for a in args]

    def run(self, args: Sequence[str], *, timeout: float | None = None,
            check: bool = True) -> Completed:
        argv = self.argv(args)
        log.debug("$ %s", shlex.join(argv))
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=timeout or self.timeout)
        except FileNotFoundError:
            raise AdbNotFoundError("adb could not be started", self.executable, INSTALL_HINT)
        except subprocess.TimeoutExpired as exc:
            state = self.get_state() if args and args[0] != "get-state" else "unknown"
            if state != "device":
                raise self.unavailable(state, f"adb {args[0]} timed out")
            raise AdbError(f"adb {args[0]} timed out", f"{exc.timeout:g} s",
                           "Raise --max-seconds or check the device is responsive")
        res = Completed(tuple(argv), p.returncode, p.stdout.decode("utf-8", "replace"),
                        p.stderr.decode("utf-8", "replace"))
        if res.returncode != 0 and check:
            self.raise_for(res, args)
        return res

    def raise_for(self, res: Completed, args: Sequence[str]) -> None:
        """Raise DeviceUnavailable if the device went away, else AdbError."""
        if _TRANSPORT.search(res.output):
            state = self.get_state()
            if state != "device":
                raise self.unavailable(state, _first(res.output))
        raise AdbError(f"adb {args[0]} failed on {self.serial or 'the device'}",
                       f"exit {res.returncode}: {_first(res.output)}",
                       "Rerun with --debug to see the adb commands")

    def unavailable(self, state: str, detail: str) -> DeviceUnavailable:
        return DeviceUnavailable(f"Device {self.serial or '(default)'} is {state}", detail,
                                 _STATE_FIXES.get(state.split(" (")[0],
                                                  "Check `adb devices -l`"), state=state)

    # -- device state ---------------------------------------------------------------------
    def devices(self) -> list[DeviceEntry]:
        return parse_devices(Adb(self.executable, timeout=30).run(["devices", "-l"]).stdout)

    def get_state(self) -> str:
        """'device', 'offline', 'unauthorized', 'not found', ... (never raises on a device
        problem: that is what it reports)."""
        try:
            res = self.run(["get-state"], timeout=15, check=False)
        except AdbError:
            return "unknown"
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
        text = res.output.lower()
        for state in ("unauthorized", "offline", "authorizing", "no permissions"):
            if state in text:
                return state
        return "not found" if "not found" in text or "no devices" in text else "unknown"

    def wait_for_device(self, timeout: float) -> bool:
        """``adb wait-for-device`` bounded by ``timeout``; True if the device is back."""
        try:
            subprocess.run(self.argv(["wait-for-device"]), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return self.get_state() == "device"

    # -- shell ------------------------------------------------------------------------------
    def shell(self, argv: Sequence[str], *, timeout: float | None = None,
              check: bool = True) -> Completed:
        """Run one device command given as a list; it reaches ``sh -c`` quoted."""
        return self.run(["shell", shlex.join([os.fspath(a) for a in argv])], timeout=timeout,
                        check=check)

    def script(self, script: str, *, timeout: float | None = None,
               check: bool = True) -> Completed:
        """Run a fixed harness-written script (no user data inside) through ``sh -c``."""
        return self.shell(["sh", "-c", script], timeout=timeout, check=check)

    def getprop(self) -> dict[str, str]:
        return parse_getprop(self.shell(["getprop"], timeout=30).stdout)

    # -- files ------------------------------------------------------------------------------
    def push(self, local: str | os.PathLike, remote: PurePosixPath) -> None:
        # An absolute local path cannot be mistaken for an option.
        self.run(["push", str(Path(local).resolve()), str(remote)])

    def pull(self, remote: PurePosixPath, local: str | os.PathLike) -> None:
        self.run(["pull", str(remote), str(Path(local).resolve())])

    # One round trip for any number of files: positional arguments of a fixed script, so
    # the names are never part of the script text. Prints a hash or '-' per file, in order.
    _SHA_SCRIPT = ('for f in "$@"; do h=$(sha256sum "$f" 2>/dev/null) && echo "${h%% *}" '
                   '|| echo -; done')

    def sha256_many(self, remotes: Sequence[PurePosixPath], *,
                    before: Sequence[str] | None = None) -> dict[PurePosixPath, str | None]:
        """sha256 of device files; None for a missing file or without sha256sum. ``before``:
        a command (argument list) run first in the same round trip, e.g. mkdir -p."""
        if not remotes:
            return {}
        cmd = shlex.join(["sh", "-c", self._SHA_SCRIPT, "sh", *map(str, remotes)])
        if before:
            cmd = shlex.join(list(before)) + " && " + cmd
        res = self.run(["shell", cmd], timeout=120, check=False)
        if res.returncode != 0:
            self.raise_for(res, ["shell"])
        lines = res.stdout.split()
        out = {}
        for i, remote in enumerate(remotes):
            token = lines[i].lower() if i < len(lines) else "-"
            out[remote] = token if re.fullmatch(r"[0-9a-f]{64}", token) else None
        return out

    def sha256(self, remote: PurePosixPath) -> str | None:
        return self.sha256_many([remote])[remote]

    def ensure_files(self, files: Sequence[tuple[str | os.PathLike, PurePosixPath, bool,
                                                 str | None]]) -> list[PurePosixPath]:
        """Push each (local, remote, executable, sha256-or-None) unless the device copy has the
        same sha256; returns the remotes pushed. Two round trips plus one per push."""
        want = {remote: sha or sha256_file(local) for local, remote, _, sha in files}
        parents = sorted({str(r.parent) for r in want})
        have = self.sha256_many(list(want), before=["mkdir", "-p", *parents])
        pushed = []
        for local, remote, _, _ in files:
            if have[remote] == want[remote]:
                log.debug("skip push of %s: same sha256 on the device", remote)
                continue
            self.push(local, remote)
            pushed.append(remote)
        if pushed:
            executables = [str(r) for _, r, x, _ in files if x and r in pushed]
            got = self.sha256_many(pushed, before=["chmod", "755", *executables]
                                   if executables else None)
            bad = [r for r in pushed if got[r] is not None and got[r] != want[r]]
            if bad:
                raise AdbError("A pushed file differs from the local one", f"{bad[0]}: "
                               f"sha256 {got[bad[0]][:12]} != {want[bad[0]][:12]}",
                               "Check the device storage (adb shell df /data/local/tmp) and "
                               "rerun")
        return pushed

    def mkdir(self, *remotes: PurePosixPath) -> None:
        self.shell(["mkdir", "-p", *map(str, remotes)])

    def remove_tree(self, remote: PurePosixPath) -> None:
        """``rm -rf`` limited to the harness work area, so a bad path cannot hurt the phone."""
        if DEVICE_ROOT not in remote.parents:
            raise ValueError(f"refusing to remove {remote}: outside {DEVICE_ROOT}")
        self.shell(["rm", "-rf", str(remote)], timeout=60)


def parse_getprop(text: str) -> dict[str, str]:
    """``getprop`` prints ``[key]: [value]`` per line."""
    return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text, re.MULTILINE))


def _first(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[0] if lines else "no output"
