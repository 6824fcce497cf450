"""Throw >= 1,000 hostile inputs at the two CLIs (`qat`, `android-harness`) and count outcomes.

    python benchmarks/hostile_bench.py                       # 1,000 cases, one worker per core
    python benchmarks/hostile_bench.py --cases 60 --timeout 20 --json /tmp/rows.json
    python benchmarks/hostile_bench.py --classes paths,locks --cases 40 --workers 2

Every case is one subprocess (`python -m pipeline ...` / `python -m android_harness ...`, own
process group, own TMPDIR, RLIMIT_AS capped with prlimit, killed past --timeout or past
--rss-cap-gib resident) in its own box directory. Fixtures (a tiny tf_keras model, its
full-int8 .tflite, data, a reference bundle, crafted .tflite files) are built once by
benchmarks/hostile_fixtures.py into WORKDIR/fixtures and reused. Classes:

  paths       `qat run` with hostile run names / output roots (--name, --set output.name, the
              recipe's [output]): ../x, absolute, .., a/../../b, NUL (via the recipe), very
              long, dot-names, --output an existing file or a symlink pointing outside. The
              model is a missing file, so no case trains; sentinel trees sit where ../x etc.
              would land and the whole box outside the output root is snapshotted.
  reads       bounded reads: FIFO, /dev/zero, /dev/urandom, a directory, a sparse 3 GB file,
              truncated files, .keras zip bombs (>= 1 GiB inflated), .npz claiming a
              terabyte shape / object dtype / truncated member / zip-bomb member - as the
              recipe, --data, --model, the .tflite of inspect/verify, and verify --reference.
  amplify     .tflite whose tensors/operators/subgraphs/buffers vectors repeat ONE offset up
              to 1e6 times, huge declared vector lengths, random byte mutations (fuzz_bench's
              mutate) - through `qat inspect`, `qat verify --data` and `android-harness host`.
  config      non-UTF-8 recipe, `qat = 3`, --set qat=3, unknown keys, non-finite values,
              deeply nested TOML, .h5 whose model_config is not JSON / a JSON list / deeply
              nested, .keras whose config.json is not an object, SavedModels whose
              keras_metadata.pb declares a Lambda with reformatted JSON (its code writes a
              marker outside the root if it ever runs: an `escape`).
  reference   `qat verify --reference` bundles whose expected.json names ../../etc/passwd,
              absolute paths, /dev/zero, or whose files are symlinks out of the bundle. A run
              that exits 0 while an output file lies outside the bundle is `readout`.
  harness     `android-harness host` with op codes changed to SPLIT/WHILE/CUSTOM/..., with
              --threads 100000, --out an existing file; `bench` on the fake adb
              (tests/fakes) behind a shim that injects ESC / NUL / CR into adb's output:
              raw control bytes relayed to the harness's stdout/stderr are `ctrlbytes`.
  isolation   `qat verify` (isolated interpreter child) on a large split, parent killed with
              SIGTERM or SIGKILL mid-run; within 5 s no process carrying the case's marker
              may survive and the case's TMPDIR must be empty (else `leak`).
  locks       two processes race to construct pipeline.core.artifacts.RunDir on the same
              directory behind a barrier; both acquiring it is a `race`.

Outcomes: exit2 (clean rejection), exit0/exit1 (accepted), exit3 (internal error), crash
(signal, or a Python traceback on stderr without --debug), hang (past --timeout; the group is
killed), oom (killed past --rss-cap-gib), escape, leak, race, ctrlbytes, readout, and for locks
exclusive, for isolation killed-clean (the parent killed, nothing left). Acceptance (exit 0 only if all hold): 0 crash, 0 hang, 0 exit3, 0 escape, 0 leak,
0 race, 0 oom, 0 ctrlbytes, 0 readout, and max peak RSS of a case's process (os.wait4's
ru_maxrss, which includes its reaped children) <= 1 GiB.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fuzz_bench import mutate  # noqa: E402

PY = sys.executable
QAT = [PY, "-m", "pipeline"]
HARNESS = [PY, "-m", "android_harness"]
FAST = ["--cooldown", "0", "--min-seconds", "0.01", "--warmup-seconds", "0", "--warmup-runs",
        "1", "--min-runs", "2", "--repeats", "1", "-q"]
WEIGHTS = {"paths": 150, "reads": 200, "amplify": 250, "config": 110, "reference": 60,
           "harness": 120, "isolation": 10, "locks": 100}
FAILURES = ("crash", "hang", "exit3", "escape", "leak", "race", "oom", "ctrlbytes", "readout")
GIB = 1 << 30


@dataclass
class Plan:
    """What one case runs. ``argv`` items may contain '{box}' / '{fx}' placeholders."""
    argv: list
    allowed: list = field(default_factory=list)   # box-relative paths writes may touch
    env: dict = field(default_factory=dict)
    kind: str = "plain"                           # plain | kill | lock | device
    extra: dict = field(default_factory=dict)


# -- small helpers ---------------------------------------------------------------------------
def _sentinel(d: Path, tag: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "KEEP.txt").write_text(f"sentinel {tag}\n")
    (d / "sub").mkdir(exist_ok=True)
    (d / "sub" / "data.bin").write_bytes(os.urandom(64))


def snapshot(box: Path, skip: set[Path]) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(box, followlinks=False):
        dp = Path(dirpath)
        dirs[:] = [d for d in dirs if dp / d not in skip]
        for name in dirs + files:
            p = dp / name
            if p in skip:
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                out[str(p)] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 1 << 20 else \
                    st.st_size
                out[str(p)] = ("file", st.st_size, st.st_mtime_ns, h)
            else:
                out[str(p)] = ("other", stat.S_IFMT(st.st_mode))
    return out


def _npy_header(shape, descr="<f4") -> bytes:
    h = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    pad = 64 - (10 + len(h) + 1) % 64
    h = h + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h


def _bomb(path: Path, members: dict[str, int], header: dict | None = None) -> None:
    """A zip whose members inflate to the given sizes (zeros, streamed, deflated)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, size in members.items():
            with z.open(name, "w", force_zip64=True) as f:
                if header and name in header:
                    f.write(header[name])
                    size -= len(header[name])
                for _ in range(size // len(chunk)):
                    f.write(chunk)
                f.write(bytes(size % len(chunk)))


def fixtures(work: Path) -> Path:
    fx = work / "fixtures"
    if not (fx / "DONE").is_file():
        print(f"building fixtures in {fx} (once; imports TensorFlow) ...", file=sys.stderr)
        shutil.rmtree(fx, ignore_errors=True)
        r = subprocess.run([PY, str(ROOT / "benchmarks" / "hostile_fixtures.py"), str(fx)],
                           capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if r.returncode:
            sys.exit(f"fixtures failed:\n{r.stderr[-3000:]}")
    if not (fx / "bomb_config.keras").is_file():
        _bomb(fx / "bomb_config.keras", {"config.json": GIB + 4096})
        _bomb(fx / "bomb_weights.keras", {"config.json": 2, "metadata.json": 2,
                                           "model.weights.h5": GIB + 4096})
        hdr = _npy_header((GIB // 64, 4, 4, 1))
        _bomb(fx / "bomb.npz", {"x_train.npy": GIB + len(hdr), "y_train.npy": 128,
                                "x_test.npy": 128, "y_test.npy": 128},
              header={"x_train.npy": hdr})
    return fx


# -- flatbuffer patching for huge declared lengths -------------------------------------------
def _u32(b, p):
    return struct.unpack_from("<I", b, p)[0]


def _field(b, table, idx):
    vt = table - struct.unpack_from("<i", b, table)[0]
    if idx * 2 + 4 >= struct.unpack_from("<H", b, vt)[0]:
        return None
    off = struct.unpack_from("<H", b, vt + 4 + 2 * idx)[0]
    return table + off if off else None


def vector_lengths(b: bytes) -> list[int]:
    """Byte positions of the length words of the model's main vectors."""
    root = _u32(b, 0)
    pos = []
    for idx in (1, 2, 4):  # operator_codes, subgraphs, buffers
        f = _field(b, root, idx)
        if f:
            pos.append(f + _u32(b, f))
    subs = _field(b, root, 2)
    sg = subs + _u32(b, subs)
    sg0 = sg + 4 + _u32(b, sg + 4)
    for idx in (0, 1, 2, 3):  # tensors, inputs, outputs, operators
        f = _field(b, sg0, idx)
        if f:
            pos.append(f + _u32(b, f))
    tv = pos[3]
    t0 = tv + 4 + _u32(b, tv + 4)
    f = _field(b, t0, 0)  # tensor 0's shape
    if f:
        pos.append(f + _u32(b, f))
    bufs = pos[2]
    for i in range(_u32(b, bufs)):
        bt = bufs + 4 + 4 * i + _u32(b, bufs + 4 + 4 * i)
        f = _field(b, bt, 0)
        if f:
            pos.append(f + _u32(b, f))
    return pos


# -- case generators -------------------------------------------------------------------------
MISSING = ["--model", "{box}/missing_model.h5", "--data", "{box}/missing_data.npz"]


def gen_paths(rng, fx):
    names = ["../x", "../../x", "{box}/abs_target/run", "..", ".", "a/../../b", "a/../b",
             "...", ".hidden", "x" * 300, "x" * 5000, "a/" * 300 + "b", "~", " ", "-x",
             "a\\..\\..\\b", "ok_name", ".ok_name.partial", ".lock", "../out/artifacts2",
             "\x1b[2J", "a\nb", "NUL"]
    outputs = ["{box}/out/artifacts", "{box}/afile", "{box}/out/link_root", "{box}/out/artifacts"]
    while True:
        name = names[rng.integers(len(names))]
        out = outputs[rng.integers(len(outputs))]
        how = ["flag", "set", "recipe"][rng.integers(3)]
        if name == "NUL":
            how = "recipe"
        allowed = [] if out != "{box}/out/artifacts" else ["out/artifacts"]
        label = f"name={name[:20]!r} out={out.split('/')[-1]} via {how}"
        if how == "flag":
            argv = [*QAT, "run", *MISSING, "--output", out, "--name", name]
        elif how == "set":
            argv = [*QAT, "run", *MISSING, "--output", out, "--set", f"output.name={name}"]
        else:
            nm = "a\\u0000b" if name == "NUL" else json.dumps(name)[1:-1]
            recipe = (f'[model]\npath = "{{box}}/missing_model.h5"\n[data]\n'
                      f'path = "{{box}}/missing_data.npz"\n[output]\ndir = "{out}"\n'
                      f'name = "{nm}"\n')
            argv = [*QAT, "run", "{box}/recipe.toml"]
            yield label, Plan(argv, allowed, extra={"recipe": recipe})
            continue
        yield label, Plan(argv, allowed)


def _read_target(kind, box: Path, fx: Path, suffix: str) -> str:
    p = box / f"target{suffix}"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind in ("zero", "urandom"):
        os.symlink(f"/dev/{kind}", p)
    elif kind == "dir":
        p.mkdir()
    elif kind == "sparse3g":
        with open(p, "wb"):
            pass
        os.truncate(p, 3 * GIB)
    elif kind == "truncated":
        src = {".h5": "tiny.h5", ".keras": "tiny.keras", ".npz": "tiny.npz",
               ".tflite": "tiny_int8.tflite", ".toml": None}[suffix]
        data = (fx / src).read_bytes() if src else b'[model]\npath = "x.h5"\n[qat]\nepochs = '
        p.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "bomb":
        src = {".keras": "bomb_config.keras", ".npz": "bomb.npz"}.get(suffix, "bomb.npz")
        os.symlink(fx / src, p)
    elif kind == "bomb_weights":
        os.symlink(fx / "bomb_weights.keras", p)
    elif kind == "tb_shape":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("x_train.npy", _npy_header((10 ** 12, 4, 4, 1)) + bytes(64))
            for k in ("y_train", "x_test", "y_test"):
                z.writestr(f"{k}.npy", _npy_header((10 ** 12,), "<i8") + bytes(64))
    elif kind == "object":
        with open(p, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, x_train=np.array([{"a": 1}] * 4, dtype=object), y_train=np.zeros(4),
                     x_test=np.array([None] * 4, dtype=object), y_test=np.zeros(4))
    elif kind == "trunc_member":
        with zipfile.ZipFile(fx / "tiny.npz") as z:
            with zipfile.ZipFile(p, "w") as w:
                for n in z.namelist():
                    d = z.read(n)
                    w.writestr(n, d[: len(d) // 2] if n == "x_train.npy" else d)
    return str(p)


def gen_reads(rng, fx):
    kinds = ["fifo", "zero", "urandom", "dir", "sparse3g", "truncated", "bomb", "bomb_weights",
             "tb_shape", "object", "trunc_member"]
    slots = {
        "recipe": (".toml", lambda t: [*QAT, "run", t], ["fifo", "zero", "urandom", "dir",
                                                         "sparse3g", "truncated"]),
        "data-verify": (".npz", lambda t: [*QAT, "verify", "{fx}/tiny_int8.tflite", "--data", t],
                        kinds),
        "data-run": (".npz", lambda t: [*QAT, "run", "--model", "{fx}/tiny.h5", "--data", t,
                                        "--output", "{box}/out/artifacts"], kinds),
        "model-h5": (".h5", lambda t: [*QAT, "run", "--model", t, "--data",
                                       "{box}/missing.npz", "--output", "{box}/out/artifacts"],
                     ["fifo", "zero", "urandom", "dir", "sparse3g", "truncated"]),
        "model-keras": (".keras", lambda t: [*QAT, "inspect", "--coverage", t],
                        ["fifo", "zero", "urandom", "dir", "sparse3g", "truncated", "bomb",
                         "bomb_weights"]),
        "tflite-inspect": (".tflite", lambda t: [*QAT, "inspect", t, "--json"],
                           ["fifo", "zero", "urandom", "dir", "sparse3g", "truncated"]),
        "tflite-verify": (".tflite", lambda t: [*QAT, "verify", t, "--data", "{fx}/tiny.npz"],
                          ["fifo", "zero", "urandom", "dir", "sparse3g", "truncated"]),
        "reference": ("", None, ["fifo", "zero", "urandom", "dir", "sparse3g", "bomb",
                                 "tb_shape", "object", "trunc_member"]),
    }
    names = list(slots)
    while True:
        slot = names[rng.integers(len(names))]
        suffix, mk, allowed_kinds = slots[slot]
        kind = allowed_kinds[rng.integers(len(allowed_kinds))]
        if slot == "reference":
            member = ["inputs.npz", "tiny_int8_outputs.npz", "expected.json"][rng.integers(3)]
            argv = [*QAT, "verify", "{fx}/tiny_int8.tflite", "--reference", "{box}/bundle"]
            yield f"{slot}:{member}={kind}", Plan(argv, ["out/artifacts"],
                                                  extra={"ref_member": (member, kind)})
            continue
        yield f"{slot}={kind}", Plan(mk("{target}"), ["out/artifacts"],
                                     extra={"target": (kind, suffix)})


def gen_amplify(rng, fx):
    reps = sorted(p.name for p in fx.glob("rep_*.tflite"))
    good = (fx / "tiny_int8.tflite").read_bytes()
    lens = vector_lengths(good)
    cmds = {"inspect": lambda t: [*QAT, "inspect", t, "--json"],
            "verify": lambda t: [*QAT, "verify", t, "--data", "{fx}/tiny.npz"],
            "host": lambda t: [*HARNESS, "host", t, *FAST, "--out", "{box}/out/artifacts/h"]}
    cnames = list(cmds)
    while True:
        c = cnames[rng.integers(len(cnames))]
        r = rng.random()
        if r < 0.3:
            name = reps[rng.integers(len(reps))]
            yield f"{c}:{name}", Plan(cmds[c]("{fx}/" + name), ["out/artifacts"])
        elif r < 0.5:
            pos = lens[rng.integers(len(lens))]
            val = [0xFFFFFFFF, 0x7FFFFFFF, 0x10000000, 1 << 20][rng.integers(4)]
            b = bytearray(good)
            b[pos: pos + 4] = struct.pack("<I", val)
            yield f"{c}:len@{pos}={val:#x}", Plan(cmds[c]("{target}"), ["out/artifacts"],
                                                  extra={"bytes": bytes(b)})
        else:
            seed = int(rng.integers(2 ** 31))
            m = mutate(good, np.random.default_rng(seed))
            yield f"{c}:mutant", Plan(cmds[c]("{target}"), ["out/artifacts"],
                                      extra={"bytes": m, "seed": seed})


def _h5_with_config(path: Path, fx: Path, cfg: bytes) -> None:
    import h5py

    shutil.copy(fx / "tiny.h5", path)
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = cfg


def gen_config(rng, fx):
    base = '[model]\npath = "{box}/missing_model.h5"\n[data]\npath = "{box}/missing.npz"\n' \
           '[output]\ndir = "{box}/out/artifacts"\n'
    recipes = {
        "non-utf8": base.encode() + b"# caf\xe9 \xff\xfe\n",
        "utf16": base.encode("utf-16"),
        "qat-scalar": base + "qat = 3\n",
        "model-scalar": 'model = 3\n[output]\ndir = "{box}/out/artifacts"\n',
        "section-array": base + "[[qat]]\nepochs = 1\n",
        "unknown-key": base + "[qat]\nepochz = 1\n",
        "unknown-section": base + "[bogus]\nx = 1\n",
        "wrong-type": base + '[qat]\nepochs = "three"\n',
        "huge-int": base + "[qat]\nepochs = 99999999999999999999999999\n",
        "nan": base + "[qat]\nlearning_rate = nan\n",
        "inf": base + "[qat]\nlearning_rate = inf\n",
        "neg": base + "[qat]\nepochs = -1\n",
        "deep": base + "[qat]\nx = " + "[" * 50000 + "]" * 50000 + "\n",
        "deep-table": base + "x = " + "{a=" * 20000 + "1" + "}" * 20000 + "\n",
        "seed-table": base + "[seed]\na = 1\n",
        "bad-toml": base + "[qat\n",
    }
    sets = ["qat=3", "qat", "=3", "qat.=1", ".epochs=1", "qat.epochs=1e999", "seed=nan",
            "qat.learning_rate=inf", "qat.epochs=-5", "output=x", "qat.epochs.x=1",
            "model.path=", "gates.min_agreement=2", "annotate.include=[", "convert.variants=3",
            "x" * 10000 + "=1", "qat.epochz=1"]
    h5s = {"not-json": b"not json", "json-list": b"[1, 2, 3]", "json-str": b'"x"',
           "no-class": b'{"config": {}}', "deep-json": b"[" * 100000 + b"]" * 100000,
           "layers-int": b'{"class_name": "Functional", "config": {"layers": 3}}',
           "empty": b""}
    kerases = {"not-json": b"not json", "json-list": b"[1]", "deep": b"[" * 100000}
    sms = sorted(p.name for p in fx.glob("lambda_sm_*"))
    while True:
        r = rng.random()
        if r < 0.3:
            k = list(recipes)[rng.integers(len(recipes))]
            yield f"recipe:{k}", Plan([*QAT, "run", "{box}/recipe.toml"], ["out/artifacts"],
                                      extra={"recipe": recipes[k]})
        elif r < 0.5:
            s = sets[rng.integers(len(sets))]
            yield f"--set {s[:24]}", Plan([*QAT, "run", *MISSING, "--set", s,
                                           "--output", "{box}/out/artifacts"], ["out/artifacts"])
        elif r < 0.7:
            k = list(h5s)[rng.integers(len(h5s))]
            cmd = ["run", "--model", "{target}", "--data", "{box}/missing.npz",
                   "--output", "{box}/out/artifacts"] if rng.random() < 0.5 else \
                ["inspect", "--coverage", "{target}"]
            yield f"h5:{k}:{cmd[0]}", Plan([*QAT, *cmd], ["out/artifacts"],
                                           extra={"h5cfg": h5s[k]})
        elif r < 0.8:
            k = list(kerases)[rng.integers(len(kerases))]
            yield f"keras:{k}", Plan([*QAT, "inspect", "--coverage", "{target}"], [],
                                     extra={"kerascfg": kerases[k]})
        else:
            sm = sms[rng.integers(len(sms))]
            yield f"savedmodel:{sm}", Plan(
                [*QAT, "run", "--model", "{fx}/" + sm, "--data", "{box}/missing.npz",
                 "--output", "{box}/out/artifacts"], ["out/artifacts"],
                env={"HOSTILE_MARKER": "{box}/outside/lambda_ran"})


def gen_reference(rng, fx):
    outs = ["../../outside/stolen.npz", "{box}/outside/stolen.npz", "/etc/passwd", "/dev/zero",
            "../../../../../../../../etc/passwd", "sub/../../outside/stolen.npz",
            "tiny_int8_outputs.npz\u0000.x", ""]
    links = ["inputs.npz", "tiny_int8_outputs.npz", "expected.json"]
    while True:
        if rng.random() < 0.6:
            o = outs[rng.integers(len(outs))]
            yield f"outputs={o[:28]!r}", Plan(
                [*QAT, "verify", "{fx}/tiny_int8.tflite", "--reference", "{box}/out/bundle"],
                ["out/artifacts"], extra={"ref_outputs": o})
        else:
            m = links[rng.integers(len(links))]
            yield f"symlink:{m}", Plan(
                [*QAT, "verify", "{fx}/tiny_int8.tflite", "--reference", "{box}/out/bundle"],
                ["out/artifacts"], extra={"ref_link": m})


ADB_SHIM = r'''#!{py}
import os, subprocess, sys
mode = os.environ.get("SHIM_MODE", "esc")
r = subprocess.run([{fake!r}, *sys.argv[1:]], capture_output=True)
inj = {{"esc": b"\x1b[31m\x1b]0;pwned\x07", "nul": b"\x00", "cr": b"\r", "all": b"\x1b[2J\x00\r"}}[mode]
def dirty(b):
    return b"".join(inj + line for line in b.splitlines(keepends=True)) if b else inj
sys.stdout.buffer.write(dirty(r.stdout)); sys.stderr.buffer.write(dirty(r.stderr))
sys.exit(r.returncode)
'''


def gen_harness(rng, fx):
    ops = sorted(p.name for p in fx.glob("op_*.tflite"))
    while True:
        r = rng.random()
        if r < 0.45:
            op = ops[rng.integers(len(ops))]
            yield f"host:{op}", Plan([*HARNESS, "host", "{fx}/" + op, *FAST, "--out",
                                      "{box}/out/artifacts/h"], ["out/artifacts"])
        elif r < 0.55:
            yield "host:--threads 100000", Plan(
                [*HARNESS, "host", "{fx}/tiny_int8.tflite", *FAST, "--threads", "100000",
                 "--out", "{box}/out/artifacts/h"], ["out/artifacts"])
        elif r < 0.65:
            yield "host:--out existing file", Plan(
                [*HARNESS, "host", "{fx}/tiny_int8.tflite", *FAST, "--out", "{box}/afile"], [])
        elif r < 0.7:
            yield "host:--inputs /dev/zero", Plan(
                [*HARNESS, "host", "{fx}/tiny_int8.tflite", *FAST, "--inputs",
                 "{box}/zero.npz", "--out", "{box}/out/artifacts/h"], ["out/artifacts"],
                extra={"zero_npz": True})
        else:
            mode = ["esc", "nul", "cr", "all"][rng.integers(4)]
            serial = ["FAKE0001", "FAKE\x1b[31mX", "FAKE\rX"][rng.integers(3)]
            yield f"device:{mode}:{serial!r}", Plan(
                [*HARNESS, "bench", "{fx}/tiny_int8.tflite", "--adb", "{box}/adb",
                 "--benchmark-model", "{box}/benchmark_model", *FAST,
                 "--out", "{box}/out/artifacts/h"], ["out/artifacts", "fakeadb"],
                env={"SHIM_MODE": mode, "FAKE_ADB_ROOT": "{box}/fakeadb",
                     "FAKE_ADB_DEVICES": f"{serial}:device"}, kind="device")


def gen_isolation(rng, fx):
    i = 0
    while True:
        sig = [signal.SIGTERM, signal.SIGKILL][i % 2]
        i += 1
        yield f"verify killed by {sig.name}", Plan(
            [*QAT, "verify", "{fx}/tiny_int8.tflite", "--data", "{fx}/big.npz",
             "--batch-size", "1"], [], kind="kill",
            extra={"signal": int(sig), "delay": float(rng.uniform(0.0, 0.5))})


LOCKER = r'''
import os, sys, time
from pathlib import Path
from pipeline.core.artifacts import RunDir
from pipeline.core.errors import QatError
final, me = sys.argv[1], sys.argv[2]
Path(final + f".ready{me}").write_text("1")
while not os.path.exists(final + ".go"):
    time.sleep(0.0005)
try:
    RunDir(final, log=lambda m: None)
    print("ACQUIRED", flush=True)
    time.sleep(0.5)
except QatError as e:
    print("REFUSED", e, file=sys.stderr)
    sys.exit(2)
'''


def gen_locks(rng, fx):
    while True:
        yield "RunDir race", Plan([PY, "-c", LOCKER], ["out/artifacts"], kind="lock",
                                  extra={"resume_first": bool(rng.random() < 0.2)})


GENERATORS = {"paths": gen_paths, "reads": gen_reads, "amplify": gen_amplify,
              "config": gen_config, "reference": gen_reference, "harness": gen_harness,
              "isolation": gen_isolation, "locks": gen_locks}


# -- running one case ------------------------------------------------------------------------
def _fill(v, box, fx, target=""):
    if isinstance(v, str):
        return v.replace("{box}", str(box)).replace("{fx}", str(fx)).replace("{target}", target)
    return v


def prepare_box(box: Path, fx: Path, plan: Plan) -> str:
    """Create the sentinel trees and the case's hostile files; returns {target}."""
    for d in ("out/artifacts", "tmp", "cwd", "outside"):
        (box / d).mkdir(parents=True, exist_ok=True)
    for s in ("x", "out/x", "out/b", "abs_target", "outside_target", "out/artifacts2"):
        _sentinel(box / s, s)
    (box / "afile").write_text("an existing file, not a directory\n")
    (box / "outside" / "KEEP.txt").write_text("outside\n")
    os.symlink(box / "outside_target", box / "out" / "link_root")
    ex, target = plan.extra, ""
    if "recipe" in ex:
        r = ex["recipe"]
        (box / "recipe.toml").write_bytes(r if isinstance(r, bytes) else
                                          _fill(r, box, fx).encode())
    if "target" in ex:
        target = _read_target(*ex["target"][:1], box, fx, ex["target"][1])
    if "bytes" in ex:
        target = str(box / "case.tflite")
        Path(target).write_bytes(ex["bytes"])
    if "h5cfg" in ex:
        target = str(box / "case.h5")
        _h5_with_config(Path(target), fx, ex["h5cfg"])
    if "kerascfg" in ex:
        target = str(box / "case.keras")
        with zipfile.ZipFile(fx / "tiny.keras") as z, zipfile.ZipFile(target, "w") as w:
            for n in z.namelist():
                w.writestr(n, ex["kerascfg"] if n == "config.json" else z.read(n))
    if "ref_member" in ex or "ref_outputs" in ex or "ref_link" in ex:
        bundle = box / ("bundle" if "ref_member" in ex else "out/bundle")
        shutil.copytree(fx / "ref", bundle)
        # a valid outputs file OUTSIDE the bundle: accepting it means the path was followed
        shutil.copy(fx / "ref" / "tiny_int8_outputs.npz", box / "outside" / "stolen.npz")
        if "ref_member" in ex:
            member, kind = ex["ref_member"]
            (bundle / member).unlink()
            t = _read_target(kind, box, fx, Path(member).suffix or ".npz")
            os.rename(t, bundle / member) if not os.path.islink(t) else \
                os.symlink(os.readlink(t), bundle / member)
        elif "ref_outputs" in ex:
            doc = json.loads((bundle / "expected.json").read_text())
            doc["variants"]["tiny_int8"]["outputs"] = _fill(ex["ref_outputs"], box, fx)
            (bundle / "expected.json").write_text(json.dumps(doc))
        else:
            m = ex["ref_link"]
            src = box / "outside" / m
            shutil.copy(fx / "ref" / m, src)
            (bundle / m).unlink()
            os.symlink(src, bundle / m)
    if ex.get("zero_npz"):
        os.symlink("/dev/zero", box / "zero.npz")
    if plan.kind == "device":
        fake = str(ROOT / "tests" / "fakes" / "adb")
        (box / "adb").write_text(ADB_SHIM.format(py=PY, fake=fake))
        (box / "adb").chmod(0o755)
        h = bytearray(64)
        h[:4], h[4], h[5], h[6] = b"\x7fELF", 2, 1, 1
        h[16:18], h[18:20] = (3).to_bytes(2, "little"), (183).to_bytes(2, "little")
        (box / "benchmark_model").write_bytes(bytes(h) + b"\nFAKE-TFLITE-BENCHMARK-MODEL\n")
        (box / "benchmark_model").chmod(0o755)
    return target


def _marked(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries this case's marker."""
    pids = []
    needle = f"HOSTILE_CASE={marker}".encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle in f.read():
                    with open(f"/proc/{d}/stat") as s:
                        if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                            pids.append(int(d))
        except OSError:
            pass
    return pids


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def spawn(argv, env, cwd, out_path, err_path, mem_cap):
    cmd = ["prlimit", f"--as={mem_cap}", "--"] + argv if shutil.which("prlimit") else argv
    with open(out_path, "wb") as o, open(err_path, "wb") as e:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e, cwd=cwd,
                                env=env, start_new_session=True)


def wait(p, timeout, rss_cap_kib, kill_after=None, kill_sig=None, marker=None):
    """(exit code, ru_maxrss KiB, hung, oom, killed). With kill_sig: send it kill_after s
    after a child process of the case (found by its marker) appears (or after 10 s)."""
    t0, hung, oom, sent, child_at = time.monotonic(), False, False, False, None
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        el = time.monotonic() - t0
        if kill_sig is not None and not sent:
            if child_at is None and (el > 10 or [q for q in _marked(marker) if q != p.pid]):
                child_at = el
            if child_at is not None and el > child_at + kill_after:
                os.kill(p.pid, kill_sig)
                sent = True
        if el > timeout and not hung:
            hung = True
            _killpg(p.pid)
        elif _rss_kib(p.pid) > rss_cap_kib and not oom:
            oom = True
            _killpg(p.pid)
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)
    if kill_sig is not None:
        return p.returncode, ru.ru_maxrss, hung, oom, sent
    return p.returncode, ru.ru_maxrss, hung, oom


def _killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def run_case(idx, cls, label, plan, fx, work, args) -> dict:
    box = work / "cases" / f"{idx:05d}"
    shutil.rmtree(box, ignore_errors=True)
    box.mkdir(parents=True)
    marker = f"{os.getpid()}-{idx}"
    row = {"id": idx, "class": cls, "case": label}
    t0 = time.monotonic()
    try:
        target = prepare_box(box, fx, plan)
    except Exception as exc:  # a fixture problem is the bench's bug: report it as such
        row.update(outcome="bench-error", error=f"{type(exc).__name__}: {exc}",
                   seconds=round(time.monotonic() - t0, 2))
        shutil.rmtree(box, ignore_errors=True)
        return row
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(box / "tmp"),
           "HOSTILE_CASE": marker, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.update({k: _fill(v, box, fx) for k, v in plan.env.items()})
    argv = [_fill(a, box, fx, target) for a in plan.argv]
    skip = {box / a for a in plan.allowed} | {box / "tmp", box / "stdout", box / "stderr"}
    before = snapshot(box, skip)
    cap_kib = int(args.rss_cap_gib * GIB) // 1024
    mem_cap = int(args.mem_cap_gib * GIB)
    outcome = None
    try:
        if plan.kind == "lock":
            final = box / "out" / "artifacts" / "run"
            final.parent.mkdir(parents=True, exist_ok=True)
            if plan.extra.get("resume_first"):
                (final.parent / ".run.partial").mkdir()
                (final.parent / ".run.partial" / ".lock").write_text("999999999")
            ps = [spawn([*argv, str(final), str(k)], env, box / "cwd", box / f"stdout{k}",
                        box / f"stderr{k}", mem_cap) for k in (0, 1)]
            t1 = time.monotonic()
            while not all(Path(f"{final}.ready{k}").exists() for k in (0, 1)):
                if time.monotonic() - t1 > args.timeout or any(p.poll() is not None for p in ps):
                    break
                time.sleep(0.005)
            Path(f"{final}.go").write_text("go")
            res = [wait(p, args.timeout, cap_kib) for p in ps]
            got = sum(Path(box / f"stdout{k}").read_bytes().count(b"ACQUIRED") for k in (0, 1))
            errs = b"".join(Path(box / f"stderr{k}").read_bytes() for k in (0, 1))
            rc = max(r[0] for r in res)
            rss = max(r[1] for r in res)
            hung, oom = any(r[2] for r in res), any(r[3] for r in res)
            row.update(acquired=got)
            outcome = ("race" if got == 2 else "hang" if hung else
                       "crash" if b"Traceback" in errs or min(r[0] for r in res) < 0 else
                       "exclusive" if got == 1 else "none-acquired")
            out_b, err_b = b"", errs
        else:
            p = spawn(argv, env, box / "cwd", box / "stdout", box / "stderr", mem_cap)
            if plan.kind == "kill":
                rc, rss, hung, oom, sent = wait(p, args.timeout, cap_kib,
                                                plan.extra["delay"], plan.extra["signal"],
                                                marker)
                row["killed"] = sent
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and (_marked(marker) or
                                                       os.listdir(box / "tmp")):
                    time.sleep(0.1)
                survivors, left = _marked(marker), os.listdir(box / "tmp")
                row.update(survivors=len(survivors), tmp_left=left[:5])
                for pid in survivors:  # clean up what the case left behind
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                if survivors or left:
                    outcome = "leak"
                elif not sent:
                    outcome = "finished-before-kill"
                else:  # the signal was the case's own doing: what counts is what it left
                    outcome = "killed-clean"
            else:
                rc, rss, hung, oom = wait(p, args.timeout, cap_kib)
            out_b, err_b = (box / "stdout").read_bytes(), (box / "stderr").read_bytes()
            _killpg(p.pid)
        row.update(rc=rc, maxrss_kib=rss)
        after = snapshot(box, skip)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if plan.kind == "lock":
            changed = [c for c in changed if ".ready" not in c and not c.endswith(".go")
                       and not Path(c).name.startswith("stdout") and
                       not Path(c).name.startswith("stderr")]
        if changed:
            row["changed"] = [os.path.relpath(c, box) for c in changed[:5]]
        traceback_seen = b"Traceback (most recent call last)" in err_b
        if outcome is None:
            if changed:
                outcome = "escape"
            elif plan.kind == "device" and any(c in out_b + err_b for c in
                                               (b"\x1b", b"\x00", b"\r")):
                outcome = "ctrlbytes"
            elif hung:
                outcome = "hang"
            elif oom:
                outcome = "oom"
            elif rc < 0 or traceback_seen:
                outcome = "crash"
            elif rc == 0 and "ref_outputs" in plan.extra and (
                    ".." in plan.extra["ref_outputs"] or plan.extra["ref_outputs"].startswith(
                        ("/", "{box}"))) or rc == 0 and "ref_link" in plan.extra:
                outcome = "readout"
            else:
                outcome = f"exit{rc}"
        elif outcome == "exclusive" and changed:
            outcome = "escape"
        lines = err_b.decode("utf-8", "replace").strip().splitlines()
        row["stderr_tail"] = lines[-1][:300] if lines else ""
        row["stderr_lines"] = len(lines)
    finally:
        row["seconds"] = round(time.monotonic() - t0, 2)
        row["outcome"] = outcome or row.get("outcome") or "bench-error"
        if not (args.keep_failed and row["outcome"] in FAILURES):
            shutil.rmtree(box, ignore_errors=True)
    return row


# -- main ------------------------------------------------------------------------------------
def allocate(total: int, classes: list[str]) -> dict[str, int]:
    w = {c: WEIGHTS[c] for c in classes}
    s = sum(w.values())
    n = {c: max(2 if c in ("isolation", "locks") else 1, round(total * v / s))
         for c, v in w.items()}
    if "isolation" in n:
        n["isolation"] = min(n["isolation"], max(2, total // 50))
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000, help="total cases (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", default=",".join(WEIGHTS),
                    help=f"comma list of {', '.join(WEIGHTS)}")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=60.0, help="per-case seconds (default 60)")
    ap.add_argument("--rss-cap-gib", type=float, default=2.0,
                    help="kill a case whose process exceeds this resident size (default 2)")
    ap.add_argument("--mem-cap-gib", type=float, default=8.0,
                    help="RLIMIT_AS of each case (prlimit; default 8)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                      "qat-hostile-bench"),
                    help="fixtures (cached) and per-case boxes")
    ap.add_argument("--json", metavar="PATH", help="save every row as JSON")
    ap.add_argument("--keep-failed", action="store_true", help="keep the boxes of failures")
    args = ap.parse_args()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    bad = [c for c in classes if c not in WEIGHTS]
    if bad:
        ap.error(f"unknown class {bad}")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    fx = fixtures(work)
    counts = allocate(args.cases, classes)
    rng = np.random.default_rng(args.seed)
    todo = []
    for c in classes:
        g = GENERATORS[c](np.random.default_rng(rng.integers(2 ** 31)), fx)
        todo += [(c, *next(g)) for _ in range(counts[c])]
    order = np.random.default_rng(args.seed + 1).permutation(len(todo))
    todo = [todo[i] for i in order]  # interleave the classes over time
    print(f"{len(todo)} cases ({', '.join(f'{c} {n}' for c, n in counts.items())}), "
          f"{args.workers} workers, timeout {args.timeout:g} s", file=sys.stderr)
    rows, t0, lock = [], time.monotonic(), threading.Lock()
    with cf.ThreadPoolExecutor(args.workers) as ex:
        futs = [ex.submit(run_case, i, c, label, plan, fx, work, args)
                for i, (c, label, plan) in enumerate(todo)]
        for f in cf.as_completed(futs):
            with lock:
                rows.append(f.result())
                if len(rows) % 100 == 0 or len(rows) == len(todo):
                    bad_n = sum(r["outcome"] in FAILURES + ("bench-error",) for r in rows)
                    print(f"[{len(rows)}/{len(todo)}] {time.monotonic() - t0:.0f} s, "
                          f"{bad_n} failing so far", file=sys.stderr, flush=True)
    dt = time.monotonic() - t0
    rows.sort(key=lambda r: r["id"])
    if args.json:  # first: the rows survive whatever the summary does
        Path(args.json).write_text(json.dumps(rows, indent=1))
    table = collections.defaultdict(collections.Counter)
    for r in rows:
        table[r["class"]][r["outcome"]] += 1
    outcomes = sorted({o for c in table.values() for o in c},
                      key=lambda o: (o in FAILURES, o))
    print(f"## Hostile inputs: {len(rows):,} cases (seed {args.seed}, timeout "
          f"{args.timeout:g} s)\n")
    print("| class | " + " | ".join(outcomes) + " | max RSS MiB | s/case |")
    print("|---|" + "---:|" * (len(outcomes) + 2))
    for c in classes:
        rs = [r for r in rows if r["class"] == c]
        rss = max((r.get("maxrss_kib", 0) for r in rs), default=0) / 1024
        sec = sum(r.get("seconds", 0.0) for r in rs) / max(1, len(rs))
        print(f"| {c} | " + " | ".join(str(table[c][o] or "") for o in outcomes)
              + f" | {rss:,.0f} | {sec:.1f} |")
    total = collections.Counter(r["outcome"] for r in rows)
    max_rss = max((r.get("maxrss_kib", 0) for r in rows), default=0)
    worst = max(rows, key=lambda r: r.get("maxrss_kib", 0)) if rows else None
    print()
    for o in FAILURES + ("bench-error",):
        if total[o]:
            ex_rows = [r for r in rows if r["outcome"] == o][:3]
            print(f"- {o}: " + "; ".join(f"{r['class']}/{r['case']} -> "
                                         f"{(r.get('changed') or r.get('stderr_tail') or r.get('error') or '')!s:.120}"
                                         for r in ex_rows))
    ok = all(total[o] == 0 for o in FAILURES) and max_rss <= GIB // 1024 \
        and not total["bench-error"]
    print(f"\nsummary: {len(rows):,} cases in {dt:.0f} s ({dt * args.workers / max(1, len(rows)):.1f}"
          f" worker-s/case); " + ", ".join(f"{o} {total[o]}" for o in FAILURES)
          + f", bench-error {total['bench-error']}, max parent RSS {max_rss / 1024:,.0f} MiB "
          f"({worst['class'] + '/' + worst['case'] if worst else '-'}; target <= 1024) -> "
          + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
