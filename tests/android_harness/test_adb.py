"""adb transport against the fake adb (tests/fakes/adb): quoting, push-by-hash, device states."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from android_harness.adb import DEVICE_ROOT, Adb, find_adb, parse_devices, parse_getprop
from android_harness.errors import AdbNotFoundError, DeviceUnavailable

HOSTILE = ["with space.tflite", "it's.tflite", 'say "hi".tflite', "a;touch pwned.tflite",
           "$(touch pwned2).tflite", "back`tick`.tflite", "-starts-with-dash.tflite"]


@pytest.fixture
def adb(fake_devices) -> Adb:
    return Adb(str(fake_devices.adb), "FAKE0001")


def test_parse_devices_long_format():
    text = ("List of devices attached\n"
            "R58M12345AB            device usb:1-1 product:beyond1lteeea model:SM_G973F "
            "device:beyond1 transport_id:3\n"
            "emulator-5554          offline transport_id:1\n"
            "0B62812I3110308E       unauthorized usb:1-2 transport_id:2\n"
            "XYZ                    no permissions (missing udev rules? user is in the plugdev "
            "group); see [http://developer.android.com/tools/device.html] usb:1-3 "
            "transport_id:4\n\n")
    d = parse_devices(text)
    assert [(e.serial, e.state) for e in d][:3] == [("R58M12345AB", "device"),
                                                    ("emulator-5554", "offline"),
                                                    ("0B62812I3110308E", "unauthorized")]
    assert d[0].model == "SM_G973F" and d[0].usb == "1-1" and d[0].transport_id == "3"
    assert d[3].state.startswith("no permissions (missing udev rules?")
    assert parse_devices("List of devices attached\nABC\tdevice\n")[0].state == "device"


def test_parse_getprop():
    props = parse_getprop("[ro.product.cpu.abi]: [arm64-v8a]\n[ro.empty]: []\n"
                          "[ro.build.fingerprint]: [a/b:14/X:user/release-keys]\n")
    assert props == {"ro.product.cpu.abi": "arm64-v8a", "ro.empty": "",
                     "ro.build.fingerprint": "a/b:14/X:user/release-keys"}


def test_devices_and_states(fake_devices):
    fake_devices.set(FAKE_ADB_DEVICES="AAA:device,BBB:offline,CCC:unauthorized")
    adb = Adb(str(fake_devices.adb))
    assert [(d.serial, d.state) for d in adb.devices()] == [
        ("AAA", "device"), ("BBB", "offline"), ("CCC", "unauthorized")]
    assert adb.for_serial("AAA").get_state() == "device"
    assert adb.for_serial("BBB").get_state() == "offline"
    assert adb.for_serial("CCC").get_state() == "unauthorized"
    assert adb.for_serial("ZZZ").get_state() == "not found"


@pytest.mark.parametrize("serial, state, fix", [
    ("BBB", "offline", "adb reconnect"),
    ("CCC", "unauthorized", "Allow USB debugging"),
    ("ZZZ", "not found", "adb devices -l"),
])
def test_unusable_device_raises_with_state_and_fix(fake_devices, serial, state, fix):
    fake_devices.set(FAKE_ADB_DEVICES="AAA:device,BBB:offline,CCC:unauthorized")
    with pytest.raises(DeviceUnavailable) as info:
        Adb(str(fake_devices.adb), serial).shell(["true"])
    assert info.value.state == state
    msg = str(info.value)
    assert f"Device {serial} is {state}" in msg and fix in msg and "\n" not in msg


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_stay_one_argument(adb, fake_devices, tmp_path, name):
    local = tmp_path / name
    local.write_bytes(b"TFL3" + name.encode())
    remote = DEVICE_ROOT / "t" / name
    pushed = adb.ensure_files([(local, remote, False, None)])
    assert pushed == [remote]
    on_device = fake_devices.fs() / str(remote).lstrip("/")
    assert on_device.read_bytes() == local.read_bytes()
    assert adb.shell(["cat", str(remote)]).stdout == local.read_text()
    assert adb.shell(["ls", str(remote.parent)]).stdout.splitlines() == [name]
    # Nothing in the name was executed by the device shell.
    assert not list(fake_devices.fs().rglob("pwned*"))


def test_push_only_when_the_hash_differs(adb, fake_devices, tmp_path):
    a, b = tmp_path / "a.tflite", tmp_path / "b bin"
    a.write_bytes(b"model-a")
    b.write_bytes(b"\x7fELF binary")
    files = [(a, DEVICE_ROOT / "r" / "a.tflite", False, None),
             (b, DEVICE_ROOT / "r" / "b bin", True, None)]
    assert adb.ensure_files(files) == [f[1] for f in files]
    assert len(fake_devices.commands("push")) == 2
    assert os.access(fake_devices.fs() / "data/local/tmp/android_harness/r/b bin", os.X_OK)
    assert adb.ensure_files(files) == []  # same sha256 on the device: nothing pushed
    assert len(fake_devices.commands("push")) == 2
    a.write_bytes(b"model-a, retrained")
    assert adb.ensure_files(files) == [files[0][1]]
    assert len(fake_devices.commands("push")) == 3
    assert adb.sha256(files[0][1]) is not None


def test_without_sha256sum_every_file_is_pushed(adb, fake_devices, tmp_path):
    fake_devices.set(FAKE_ADB_NO_SHA256SUM="1")
    f = tmp_path / "m.tflite"
    f.write_bytes(b"x")
    spec = [(f, DEVICE_ROOT / "r" / "m.tflite", False, None)]
    assert adb.ensure_files(spec) and adb.ensure_files(spec)
    assert len(fake_devices.commands("push")) == 2


def test_remove_tree_is_confined_to_the_work_area(adb, fake_devices):
    work = DEVICE_ROOT / "run-1"
    adb.mkdir(work / "models")
    with pytest.raises(ValueError, match="outside"):
        adb.remove_tree(PurePosixPath("/data/local/tmp"))
    with pytest.raises(ValueError, match="outside"):
        adb.remove_tree(DEVICE_ROOT)
    adb.remove_tree(work)
    assert not (fake_devices.fs() / str(work).lstrip("/")).exists()


def test_wait_for_device_times_out(fake_devices):
    fake_devices.set(FAKE_ADB_DEVICES="BBB:offline")
    assert Adb(str(fake_devices.adb), "BBB").wait_for_device(0.5) is False


def test_missing_adb_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for var in ("ADB", "ANDROID_HOME", "ANDROID_SDK_ROOT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(AdbNotFoundError) as info:
        find_adb()
    assert "platform-tools" in str(info.value) and "apt-get install adb" in str(info.value)
    with pytest.raises(AdbNotFoundError, match="does not exist"):
        find_adb(str(tmp_path / "adb"))
    sdk = tmp_path / "sdk" / "platform-tools"
    sdk.mkdir(parents=True)
    (sdk / "adb").write_text("#!/bin/sh\n")
    (sdk / "adb").chmod(0o755)
    monkeypatch.setenv("ANDROID_HOME", str(tmp_path / "sdk"))
    assert Path(find_adb()) == sdk / "adb"
