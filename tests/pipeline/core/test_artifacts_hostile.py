"""Hostile cases for RunDir and atomic writes: racing runs, stale locks, a full disk,
an output path that is a file, and the manifest of a resumed run."""

import errno
import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from pipeline.stages import report
from pipeline.core.artifacts import RunDir, atomic_write_bytes, check_output_dir
from pipeline.core.errors import OutputError, UsageError


def _quiet(*_):
    pass


def _contender(final, start, results, release):
    start.wait()
    try:
        run = RunDir(final, log=_quiet)
    except UsageError as exc:
        results.put(("lost", str(exc)))
        return
    results.put(("won", os.getpid()))
    release.wait(30)  # hold the lock until the parent has seen both answers
    run.abort(keep=False)


def test_two_processes_racing_for_the_lock_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for i in range(10):
        final = str(tmp_path / f"race{i}")
        start, release, results = ctx.Barrier(2), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_contender, args=(final, start, results, release))
                 for _ in range(2)]
        for p in procs:
            p.start()
        answers = [results.get(timeout=30) for _ in procs]
        release.set()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        kinds = sorted(a[0] for a in answers)
        assert kinds == ["lost", "won"], (i, answers)
        lost = next(a[1] for a in answers if a[0] == "lost")
        winner = next(a[1] for a in answers if a[0] == "won")
        assert "Another run is writing to this run directory" in lost
        assert f"pid {winner}" in lost
        assert not os.path.exists(os.path.join(tmp_path, f".race{i}.lock"))


def test_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".m.lock").write_text(f"{dead.pid}\n")  # left by a run killed with -9
    run = RunDir(tmp_path / "m", log=_quiet)
    assert run.locked
    assert (tmp_path / ".m.lock").read_text().strip() == str(os.getpid())
    run.write_text("a.txt", "a")
    run.commit()
    assert (tmp_path / "m" / "a.txt").read_text() == "a"
    assert not (tmp_path / ".m.lock").exists()


def test_pid_file_of_an_unrelated_live_process_does_not_block(tmp_path):
    # pid reuse: the pid in an old lock file now belongs to some other process (here: us,
    # or pid 1); only a held flock blocks, so the run proceeds
    staging = tmp_path / ".m.partial"
    staging.mkdir()
    (staging / ".lock").write_text("1")  # the pid-file lock of older versions
    (tmp_path / ".m.lock").write_text("1\n")
    run = RunDir(tmp_path / "m", log=_quiet)
    assert run.locked and not (run.staging / ".lock").exists()
    run.abort(keep=False)


def test_lock_is_released_when_the_constructor_fails(tmp_path):
    with pytest.raises(UsageError, match="Nothing to resume"):
        RunDir(tmp_path / "m", resume=True, log=_quiet)
    assert not (tmp_path / ".m.lock").exists()
    RunDir(tmp_path / "m", log=_quiet).abort(keep=False)  # not blocked by the failed attempt


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_in_atomic_write_is_an_output_error(tmp_path, monkeypatch, err):
    def full(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "out" / "model.tflite"
    with pytest.raises(OutputError) as exc:
        atomic_write_bytes(target, b"x" * 100)
    assert exc.value.exit_code == 2
    msg = str(exc.value)
    assert "Cannot write the artifacts" in msg and str(target) in msg and "\n" not in msg
    assert ("disk is full" if err == errno.ENOSPC else "quota") in msg
    assert os.listdir(tmp_path / "out") == []  # the temp file was removed


def test_full_disk_inside_a_writer_callback_is_an_output_error(tmp_path):
    run = RunDir(tmp_path / "m", log=_quiet)
    with pytest.raises(OutputError, match="disk is full"):
        with run.writing("keras/model.h5") as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert not (run.staging / "keras" / "model.h5").exists()
    run.abort(keep=False)


def test_other_os_errors_stay_bugs(tmp_path, monkeypatch):
    def broken(fd):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError) as exc:
        atomic_write_bytes(tmp_path / "f", b"x")
    assert not isinstance(exc.value, OutputError)


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_output_dir_that_is_a_file_is_refused(tmp_path, where):
    f = tmp_path / "taken"
    f.write_text("keep me")
    target = f if where == "itself" else f / "sub"
    with pytest.raises(UsageError) as exc:
        check_output_dir(target, "--output")
    assert "is a regular file, not a directory" in str(exc.value)
    assert str(target) in str(exc.value)
    with pytest.raises(UsageError, match="not a directory"):
        RunDir(target / "run", log=_quiet)
    assert f.read_text() == "keep me"


def test_run_name_taken_by_a_regular_file_is_not_replaced(tmp_path):
    (tmp_path / "m").write_text("user file")
    with pytest.raises(UsageError, match="name is taken by a file"):
        RunDir(tmp_path / "m", log=_quiet)
    assert (tmp_path / "m").read_text() == "user file"


def test_manifest_of_a_resumed_run_lists_every_file(tmp_path):
    first = RunDir(tmp_path / "m", log=_quiet)
    first.write_text("config.toml", "seed = 0\n")
    first.write_json("keras/float_training.json", {"epochs": 3})
    with first.writing("checkpoints/epoch_001") as tmp:  # a checkpoint directory
        tmp.mkdir()
        (tmp / "ckpt.index").write_bytes(b"i")
        (tmp / "ckpt.data-00000-of-00001").write_bytes(b"d" * 10)
    with first.writing("checkpoints/epoch_002") as tmp:
        tmp.mkdir()
        (tmp / "ckpt.index").write_bytes(b"j")
    first.abort(keep=True)  # killed after these files

    second = RunDir(tmp_path / "m", resume=True, log=_quiet)
    assert second.files == {}
    import shutil

    shutil.rmtree(second.path("checkpoints/epoch_001"))  # rotated away by the resumed run
    second.write_text("config.toml", "seed = 0\n")
    second.write_bytes("qat_int8.tflite", b"TFL3")
    second.files["gone.txt"] = {"sha256": "0", "bytes": 1}  # recorded, then deleted
    report.write_manifest(second, config_hash="h", timings={}, status="passed")
    final = second.commit()
    manifest = json.loads((final / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [p for p in on_disk if p != "manifest.json"]
    assert "keras/float_training.json" in manifest["files"]
    assert "checkpoints/epoch_002/ckpt.index" in manifest["files"]
    from pipeline.core.artifacts import sha256_file

    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(final / rel)
        assert entry["bytes"] == (final / rel).stat().st_size
