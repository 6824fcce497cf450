import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

from pipeline.core.artifacts import RunDir, atomic_write_bytes, sha256_file
from pipeline.core.errors import UsageError


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "model.tflite"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_killed_writer_never_leaves_a_partial_final_file(tmp_path):
    """SIGKILL a process in the middle of writing a large artifact: the final name is
    either absent or complete, never partial."""
    target = tmp_path / "big.tflite"
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.getcwd()!r})
        import pipeline.core.artifacts as a
        real = os.fsync
        def slow(fd):
            print("writing", flush=True)
            import time; time.sleep(30)
        os.fsync = slow
        a.atomic_write_bytes({str(target)!r}, b"x" * 5_000_000)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not target.exists()
    # the next run cleans up the stray temp file
    run = RunDir(tmp_path / "run")
    assert run.staging.is_dir()


def test_run_dir_commit_replaces_final_and_records_hashes(tmp_path):
    final = tmp_path / "artifacts" / "m"
    first = RunDir(final, log=lambda *_: None)
    first.write_bytes("a.tflite", b"one")
    first.write_json("r.json", {"x": 1})
    assert not final.exists()  # nothing under the final name until commit
    first.commit()
    assert (final / "a.tflite").read_bytes() == b"one"
    assert first.files["a.tflite"]["sha256"] == sha256_file(final / "a.tflite")
    assert oct((final / "a.tflite").stat().st_mode & 0o777) != oct(0o600)

    second = RunDir(final, log=lambda *_: None)
    second.write_bytes("b.tflite", b"two")
    second.abort(keep=False)  # a failed run: the previous complete run is untouched
    assert (final / "a.tflite").exists() and not (final / "b.tflite").exists()
    assert not second.staging.exists()

    third = RunDir(final, log=lambda *_: None)
    third.write_bytes("b.tflite", b"two")
    third.commit()
    assert sorted(p.name for p in final.iterdir()) == ["b.tflite"]
    assert not any(p.name.startswith(".m.") for p in final.parent.iterdir())


def test_resume_needs_something_to_resume(tmp_path):
    with pytest.raises(UsageError, match="Nothing to resume"):
        RunDir(tmp_path / "m", resume=True, log=lambda *_: None)


def test_live_lock_blocks_a_second_writer(tmp_path):
    final = tmp_path / "m"
    code = ("import sys, time; from pipeline.core.artifacts import RunDir; "
            f"r = RunDir({str(final)!r}, log=lambda *_: None); print('locked', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=f"Another run.*locked by pid {holder.pid}"):
            RunDir(final, log=lambda *_: None)
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
        holder.wait()
    assert (tmp_path / ".m.lock").is_file()
    run = RunDir(final, log=lambda *_: None)  # the kernel released the dead owner's flock
    assert run.locked
    run.abort(keep=False)
    assert not (tmp_path / ".m.lock").exists()
