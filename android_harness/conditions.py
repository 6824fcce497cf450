"""What an Android device reports about itself: identity, CPUs, battery, thermal state.

Everything is read in one ``adb shell`` round trip (a fixed script with section markers), from
``getprop``, sysfs (/sys/devices/system/cpu, /sys/class/thermal), ``dumpsys battery`` and
``dumpsys thermalservice`` (Android 10+; older releases answer "Can't find service").
"""

from __future__ import annotations

import re

from android_harness.adb import Adb, parse_getprop

# Android ThermalStatus constants (android.os.PowerManager.THERMAL_STATUS_*).
THERMAL_STATUS = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical",
                  5: "emergency", 6: "shutdown"}
# android.os.BatteryManager.BATTERY_STATUS_*
BATTERY_STATUS = {1: "unknown", 2: "charging", 3: "discharging", 4: "not charging", 5: "full"}

ZONES_SCRIPT = ('for z in /sys/class/thermal/thermal_zone*; do [ -r "$z/temp" ] && '
                'echo "${z##*/}|$(cat "$z/type" 2>/dev/null)|$(cat "$z/temp" 2>/dev/null)"; '
                'done; true')
CONDITIONS_SCRIPT = (
    "echo @@props; getprop; "
    "echo @@cpus; for c in /sys/devices/system/cpu/cpu[0-9]*; do "
    'echo "${c##*/cpu} $(cat "$c/online" 2>/dev/null || echo 1) '
    '$(cat "$c/cpufreq/cpuinfo_max_freq" 2>/dev/null || echo -) '
    '$(cat "$c/cpufreq/scaling_governor" 2>/dev/null || echo -)"; done; '
    "echo @@battery; dumpsys battery 2>&1; "
    "echo @@thermalservice; dumpsys thermalservice 2>&1; "
    "echo @@zones; " + ZONES_SCRIPT)


def sections(text: str) -> dict[str, str]:
    out, name, buf = {}, None, []
    for line in text.splitlines():
        if line.startswith("@@"):
            if name:
                out[name] = "\n".join(buf)
            name, buf = line[2:].strip(), []
        else:
            buf.append(line)
    if name:
        out[name] = "\n".join(buf)
    return out


def celsius(raw: str) -> float | None:
    """sysfs thermal_zone*/temp is millidegrees on almost every kernel; a few report degrees.
    Readings outside -30..150 degC are unfitted/virtual sensors and dropped."""
    try:
        v = float(raw)
    except ValueError:
        return None
    c = v / 1000.0 if abs(v) >= 1000 else v
    return c if -30.0 <= c <= 150.0 else None


def parse_zones(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        zone, kind, raw = parts
        c = celsius(raw.strip())
        if c is None:
            continue
        key = kind.strip() or zone
        if key in out:
            key = f"{key}#{zone.removeprefix('thermal_zone')}"
        out[key] = c
    return out


def parse_battery(text: str) -> dict | None:
    fields = dict(re.findall(r"^\s*([A-Za-z][\w ]*?):\s*(.*?)\s*$", text, re.MULTILINE))
    if "level" not in fields:
        return None

    def num(k):
        try:
            return int(fields[k])
        except (KeyError, ValueError):
            return None

    temp = num("temperature")
    status = num("status")
    plugged = [k.split()[0] for k in ("AC powered", "USB powered", "Wireless powered")
               if fields.get(k) == "true"]
    return {"level": num("level"), "scale": num("scale"),
            "temperature_c": temp / 10.0 if temp is not None else None,  # tenths of degC
            "status": BATTERY_STATUS.get(status, status), "plugged": plugged or None,
            "voltage_mv": num("voltage")}


_TEMP = re.compile(r"Temperature\{mValue=(-?[\d.]+(?:[eE][-+]?\d+)?), mType=(-?\d+), "
                   r"mName=([^,}]+)(?:, mStatus=(\d+))?\}")


def _indented_block(text: str, header: str) -> str:
    """The indented lines right after ``header`` (dumpsys prints sections that way)."""
    lines = text.split(header, 1)[1].splitlines()[1:] if header in text else []
    block = []
    for line in lines:
        if line.strip() and not line[:1].isspace() and not line.startswith("Temperature{"):
            break
        block.append(line)
    return "\n".join(block)


def parse_thermalservice(text: str) -> dict | None:
    """``dumpsys thermalservice``: "Thermal Status: N" and the HAL's current temperatures
    (the "Cached temperatures" block may be stale, so it is only a fallback)."""
    m = re.search(r"Thermal Status:\s*(\d+)", text)
    if not m:
        return None  # "Can't find service: thermalservice" before Android 10
    status = int(m.group(1))
    temps = {}
    for header in ("Current temperatures from HAL:", "Cached temperatures:"):
        found = _TEMP.findall(_indented_block(text, header))
        if found:
            temps = {name.strip(): float(v) for v, _, name, _ in found}
            break
    return {"status": status, "status_name": THERMAL_STATUS.get(status, str(status)),
            "temperatures": temps}


def parse_cpus(text: str) -> list[dict]:
    cpus = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        n, online, mx, gov = parts
        cpus.append({"cpu": int(n), "online": online.strip() == "1",
                     "max_khz": int(mx) if mx.isdigit() else None,
                     "governor": None if gov == "-" else gov})
    return sorted(cpus, key=lambda c: c["cpu"])


def identity(props: dict[str, str]) -> dict:
    soc = " ".join(v for v in (props.get("ro.soc.manufacturer"), props.get("ro.soc.model")) if v)
    return {"manufacturer": props.get("ro.product.manufacturer"),
            "model": props.get("ro.product.model"),
            "device": props.get("ro.product.device"),
            "soc": soc or props.get("ro.board.platform") or props.get("ro.hardware") or None,
            "board_platform": props.get("ro.board.platform"),
            "android_release": props.get("ro.build.version.release"),
            "sdk": int(props["ro.build.version.sdk"]) if props.get("ro.build.version.sdk",
                                                                   "").isdigit() else None,
            "abi": props.get("ro.product.cpu.abi"),
            "abilist": [a for a in props.get("ro.product.cpu.abilist", "").split(",") if a],
            "fingerprint": props.get("ro.build.fingerprint")}


class Device:
    """Reads a device's identity and conditions (one adb round trip each)."""

    def __init__(self, adb: Adb):
        self.adb = adb
        self.props: dict[str, str] = {}
        self.cpus: list[dict] = []

    @property
    def serial(self) -> str:
        return self.adb.serial or "(default)"

    def identity(self) -> dict:
        if not self.props:
            self.props = self.adb.getprop()
        return identity(self.props)

    def conditions(self) -> dict:
        parts = sections(self.adb.script(CONDITIONS_SCRIPT, timeout=60).stdout)
        self.props = parse_getprop(parts.get("props", "")) or self.props
        cpus = self.cpus = parse_cpus(parts.get("cpus", ""))
        clusters: dict[str, list[int]] = {}
        for c in cpus:
            clusters.setdefault(str(c["max_khz"]), []).append(c["cpu"])
        return {"kind": "device", "serial": self.adb.serial, **identity(self.props),
                "cores": len(cpus), "cpus": cpus, "clusters_by_max_khz": clusters,
                "governors": sorted({c["governor"] for c in cpus if c["governor"]}),
                "battery": parse_battery(parts.get("battery", "")),
                "thermal_service": parse_thermalservice(parts.get("thermalservice", "")),
                "thermal": parse_zones(parts.get("zones", ""))}

    def thermal_zones(self) -> dict[str, float]:
        return parse_zones(self.adb.script(ZONES_SCRIPT, timeout=30).stdout)
