"""RunDir: every file of a run goes through it, atomically, with its sha256 in the manifest.

A run writes into a staging directory beside its final one (``artifacts/.NAME.partial``); files
are written to a temporary name in the same directory, fsynced and renamed. When the run
completes (gates passed or not), the staging directory replaces the final one, so
``artifacts/NAME/`` always holds one complete run and a failed or killed run never leaves a
half-written file under a final name. A killed run's staging directory keeps its checkpoints
for ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UsageError

_TMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename over ``path``."""
    path = Path(path)
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
    """The staging directory of one run and the final directory it becomes."""

    def __init__(self, final: str | os.PathLike, *, resume: bool = False, log=print):
        self.final = Path(final)
        self.staging = self.final.parent / f".{self.final.name}.partial"
        self.files: dict[str, dict] = {}
        self.resumed = False
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._check_lock()
        if resume:
            if self.staging.is_dir():
                self.resumed = True
            elif (self.final / "checkpoints").is_dir():
                shutil.copytree(self.final, self.staging)  # continue a finished run
                self.resumed = True
            else:
                raise UsageError("Nothing to resume", str(self.staging),
                                 "Run once without --resume first")
            log(f"resuming the run in {self.staging}")
        elif self.staging.exists():
            log(f"discarding an unfinished run in {self.staging} (use --resume to continue one)")
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._clean_tmp()
        (self.staging / ".lock").write_text(str(os.getpid()))

    def _check_lock(self) -> None:
        lock = self.staging / ".lock"
        if not lock.is_file():
            return
        try:
            pid = int(lock.read_text().strip() or 0)
        except ValueError:
            return
        if pid and pid != os.getpid() and _alive(pid):
            raise UsageError("Another run is writing to this run directory",
                             f"{self.staging} (pid {pid})",
                             "Wait for it, or pass --name to use another directory")

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
        target.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
        tmp = tmpdir / target.name
        try:
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
        (self.staging / ".lock").unlink(missing_ok=True)
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, old)
        os.replace(self.staging, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abort(self, *, keep: bool) -> None:
        """After a failure: keep the staging dir (for --resume) or remove it."""
        (self.staging / ".lock").unlink(missing_ok=True)
        if not keep:
            shutil.rmtree(self.staging, ignore_errors=True)


def dumps_json(obj) -> str:
    """Strict JSON: NaN/inf (e.g. the SQNR of identical tensors) become null, numpy scalars
    and arrays become numbers and lists."""
    return json.dumps(_finite(json.loads(json.dumps(obj, default=_jsonable))), indent=2,
                      allow_nan=False)


def _finite(o):
    import math

    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _jsonable(o):
    import numpy as np

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
