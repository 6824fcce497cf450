"""RunDir: every file of a run goes through it, atomically, with its sha256 in the manifest.

A run writes into a staging directory beside its final one (``artifacts/.NAME.partial``); files
are written to a temporary name in the same directory, fsynced and renamed. When the run
completes (gates passed or not), the staging directory replaces the final one, so
``artifacts/NAME/`` always holds one complete run and a failed or killed run never leaves a
half-written file under a final name. A killed run's staging directory keeps its checkpoints
for ``--resume``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.core.errors import OutputError, UsageError
from pipeline.core.files import describe_mode

_TMP_PREFIX = ".tmp-"
# Errors of the disk, not of the program: a full disk or quota, a read-only filesystem, no
# permission. They are the user's to fix (exit 2), with the path that failed.
_OUTPUT_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the filesystem is read-only",
                  errno.EACCES: "permission denied"}
_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def output_errors(path):
    """Turn an OSError of the disk (full, quota, read-only, permission) while writing under
    ``path`` into an OutputError (exit 2) naming the path and the cause."""
    try:
        yield
    except OSError as exc:
        cause = _OUTPUT_ERRNOS.get(exc.errno)
        if cause is None or isinstance(exc, (FileNotFoundError,)):
            raise
        where = exc.filename or os.fspath(path)
        raise OutputError(f"Cannot write the artifacts: {cause}",
                          f"{where} ({exc.strerror or os.strerror(exc.errno)})",
                          "Free space (or fix the permissions) there, or pass --output on "
                          "another disk") from exc


def check_output_dir(path, option: str = "--output") -> None:
    """Fail early (before any work) when the output directory cannot be one: it, or a parent
    of it, is an existing non-directory."""
    p = Path(os.path.abspath(os.fspath(path)))
    for q in (p, *p.parents):
        if not os.path.lexists(q):
            continue
        if q.is_dir():
            return
        what = "a regular file" if q.is_file() else describe_mode(os.stat(q).st_mode) \
            if q.exists() else "a broken symbolic link"
        where = "is" if q == p else f"is under {q}, which is"
        raise UsageError(f"The output directory {where} {what}, not a directory",
                         f"{option} {os.fspath(path)}",
                         "Pass a directory (it is created if missing)")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename over ``path``."""
    path = Path(path)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; artifacts are ordinary files
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


class RunDir:
    """The staging directory of one run and the final directory it becomes.

    Lock: ``artifacts/.NAME.lock`` beside the staging directory, held with ``flock`` for the
    run's lifetime (the kernel releases it when the process dies, whatever the pid in it), so
    two runs can never write the same directory and a dead run's lock never blocks."""

    def __init__(self, final: str | os.PathLike, *, resume: bool = False, log=print,
                 check_resume=None):
        self.final = Path(final)
        self.staging = self.final.parent / f".{self.final.name}.partial"
        self.lock_path = self.final.parent / f".{self.final.name}.lock"
        self.files: dict[str, dict] = {}
        self.resumed = False
        self._lock_fd: int | None = None
        with output_errors(self.final.parent):
            check_output_dir(self.final.parent)
            if os.path.lexists(self.final) and not self.final.is_dir():
                raise UsageError("The run directory's name is taken by a file",
                                 str(self.final), "Pass --name to use another directory, or "
                                 "move the file away")
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
            try:
                self._open(resume, log, check_resume)
            except BaseException:
                self._release_lock()
                raise

    def _open(self, resume: bool, log, check_resume) -> None:
        if resume:
            if self.staging.is_dir():
                source = self.staging
            elif (self.final / "checkpoints").is_dir():
                source = self.final  # continue a finished run
            else:
                raise UsageError("Nothing to resume", str(self.staging),
                                 "Run once without --resume first")
            if check_resume is not None:
                check_resume(source)
            if source == self.final:
                shutil.copytree(self.final, self.staging)
            self.resumed = True
            log(f"resuming the run in {self.staging}")
        elif self.staging.exists():
            log(f"discarding an unfinished run in {self.staging} (use --resume to continue one)")
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        (self.staging / ".lock").unlink(missing_ok=True)  # the pid file of older versions
        self._clean_tmp()

    def _acquire_lock(self) -> None:
        """flock the lock file; retry if the file we locked was unlinked meanwhile (its
        owner released it), so two processes never hold locks on different inodes."""
        for _ in range(100):
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                         0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:  # the owner writes its pid just after locking: give it a moment
                    owner = ""
                    for _ in range(50):
                        owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                        if owner:
                            break
                        time.sleep(0.01)
                finally:
                    os.close(fd)
                owner = owner or "?"
                raise UsageError("Another run is writing to this run directory",
                                 f"{self.staging} (locked by pid {owner})",
                                 "Wait for it, or pass --name to use another directory")
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_fd = fd
            return
        raise UsageError("Could not take the run lock", str(self.lock_path),  # pragma: no cover
                         "Retry; another process keeps replacing the lock file")

    def _release_lock(self) -> None:
        """Unlink, then unlock (closing): a waiter that locked the old inode sees it is gone."""
        if self._lock_fd is None:
            return
        try:
            os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def _clean_tmp(self) -> None:
        """Remove temp files a killed run left (never final names)."""
        for p in self.staging.rglob(_TMP_PREFIX + "*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    # -- writing --------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.staging / rel

    def _record(self, rel: str) -> None:
        p = self.staging / rel
        self.files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}

    def inventory(self) -> dict[str, dict]:
        """Bring ``files`` in line with the staging directory: every file there, including
        those an earlier (resumed) attempt wrote and checkpoint directories, with its sha256;
        entries of files removed since are dropped."""
        present = set()
        for p in sorted(self.staging.rglob("*")):
            rel = p.relative_to(self.staging).as_posix()
            if not p.is_file() or any(part.startswith(_TMP_PREFIX) for part in
                                      p.relative_to(self.staging).parts) or rel == ".lock":
                continue
            present.add(rel)
            st = p.stat()
            known = self.files.get(rel)
            if known is None or known.get("bytes") != st.st_size:
                self._record(rel)
        for rel in list(self.files):
            if rel not in present:
                del self.files[rel]
        return self.files

    def write_bytes(self, rel: str, data: bytes) -> Path:
        atomic_write_bytes(self.staging / rel, data)
        self._record(rel)
        return self.final / rel

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj) -> Path:
        return self.write_text(rel, dumps_json(obj) + "\n")

    @contextmanager
    def writing(self, rel: str):
        """Yield a temp path for a writer that needs a filename (Keras save, np.savez)."""
        target = self.staging / rel
        with output_errors(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        with output_errors(target):
            tmpdir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
        tmp = tmpdir / target.name
        try:
            with output_errors(target):
                yield tmp
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if target.is_file():
            self._record(rel)

    def record_existing(self, rel: str) -> None:
        """Account for a file written by an earlier (resumed) attempt of this run."""
        if (self.staging / rel).is_file():
            self._record(rel)

    # -- finishing ------------------------------------------------------------------------
    def commit(self) -> Path:
        """Replace the final directory with the staging one (two renames; the old run is
        moved aside first so the final name never holds a mix of two runs)."""
        old = None
        try:
            with output_errors(self.final):
                if self.final.exists():
                    old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
                    os.replace(self.final, old)
                os.replace(self.staging, self.final)
        finally:
            self._release_lock()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abort(self, *, keep: bool) -> None:
        """After a failure: keep the staging dir (for --resume) or remove it."""
        try:
            if not keep:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._release_lock()


def dumps_json(obj) -> str:
    """Strict JSON: NaN/inf (e.g. the SQNR of identical tensors) become null, numpy scalars
    and arrays become numbers and lists."""
    return json.dumps(_finite(json.loads(json.dumps(obj, default=_jsonable))), indent=2,
                      allow_nan=False)


def _finite(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
