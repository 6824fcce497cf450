"""What a device reports about itself: parsers on real formats, then the fake device."""

from __future__ import annotations

import pytest

from android_harness.adb import Adb
from android_harness.conditions import (Device, celsius, parse_battery, parse_cpus,
                                        parse_thermalservice, parse_zones)

THERMALSERVICE = """IsStatusOverride: false
ThermalEventListeners:
\tcallbacks: 1
\tkilled: false
Thermal Status: 2
Cached temperatures:
\tTemperature{mValue=99.0, mType=0, mName=BIG, mStatus=3}
HAL Ready: true
HAL connection:
\tThermalHAL 2.0 connected: yes
Current temperatures from HAL:
\tTemperature{mValue=41.5, mType=0, mName=BIG, mStatus=0}
\tTemperature{mValue=33.25, mType=3, mName=VIRTUAL-SKIN, mStatus=0}
Current cooling devices from HAL:
\tCoolingDevice{mValue=0, mType=2, mName=thermal-cpufreq-0}
"""

BATTERY = """Current Battery Service state:
  AC powered: false
  USB powered: true
  Wireless powered: false
  Max charging current: 500000
  status: 2
  health: 2
  present: true
  level: 85
  scale: 100
  voltage: 4190
  temperature: 286
  technology: Li-ion
"""


def test_thermalservice_prefers_current_hal_temperatures():
    t = parse_thermalservice(THERMALSERVICE)
    assert t == {"status": 2, "status_name": "moderate",
                 "temperatures": {"BIG": 41.5, "VIRTUAL-SKIN": 33.25}}
    assert parse_thermalservice("Can't find service: thermalservice") is None


def test_battery():
    b = parse_battery(BATTERY)
    assert b["level"] == 85 and b["temperature_c"] == 28.6  # tenths of degC
    assert b["status"] == "charging" and b["plugged"] == ["USB"] and b["voltage_mv"] == 4190
    assert parse_battery("Can't find service: battery") is None


@pytest.mark.parametrize("raw, expected", [("45200", 45.2), ("38", 38.0), ("-273000", None),
                                           ("", None), ("n/a", None)])
def test_zone_units(raw, expected):
    assert celsius(raw) == expected


def test_zones_keep_duplicates_apart():
    text = ("thermal_zone0|cpu-0-0|45200\nthermal_zone1|battery|28000\n"
            "thermal_zone2|cpu-0-0|46000\nthermal_zone3|bogus|-273000\nthermal_zone4|x|\n")
    assert parse_zones(text) == {"cpu-0-0": 45.2, "battery": 28.0, "cpu-0-0#2": 46.0}


def test_cpus():
    cpus = parse_cpus("0 1 1804800 schedutil\n7 0 2841600 performance\n5 1 - -\n")
    assert [c["cpu"] for c in cpus] == [0, 5, 7]
    assert cpus[2] == {"cpu": 7, "online": False, "max_khz": 2841600, "governor": "performance"}
    assert cpus[1]["max_khz"] is None and cpus[1]["governor"] is None


def test_conditions_of_the_fake_device(fake_devices):
    fake_devices.set(FAKE_ADB_CORES="6", FAKE_ADB_THERMAL="44.5")
    c = Device(Adb(str(fake_devices.adb), "FAKE0001")).conditions()
    assert (c["manufacturer"], c["model"], c["soc"], c["abi"]) == ("Google", "Pixel 7",
                                                                   "Google GS201", "arm64-v8a")
    assert c["android_release"] == "14" and c["sdk"] == 34
    assert c["cores"] == 6 and c["governors"] == ["schedutil"]
    assert sum(len(v) for v in c["clusters_by_max_khz"].values()) == 6
    assert c["battery"]["level"] == 81
    assert c["thermal_service"]["status_name"] == "none"
    assert max(c["thermal"].values()) == 44.5


def test_android_9_has_no_thermalservice(fake_devices):
    fake_devices.set(FAKE_ADB_NO_THERMALSERVICE="1")
    c = Device(Adb(str(fake_devices.adb), "FAKE0001")).conditions()
    assert c["thermal_service"] is None and c["thermal"]
