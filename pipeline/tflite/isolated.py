"""Run untrusted .tflite files in a child process, so a native crash becomes a clear error.

TFLite's Python loader does not run the flatbuffer verifier; a truncated or crafted file can
crash the process (LiteRT#10080; CVE-2020-15211, CVE-2021-29605, CVE-2022-23559). Files the
pipeline did not just write are therefore (1) pre-checked in Python (``tflite_model``: header,
every offset and index, buffer sizes, work bounded by the file size) and (2) loaded and invoked
in a child process with an address-space limit and a timeout.

Protocol, over the child's stdin/stdout pipes only (no temp files, so nothing is left behind
however the parent ends): a JSON header line, then the model bytes and an .npz of the inputs,
their lengths given in the header; the reply is a JSON line and the .npz of the outputs, read
with ``allow_pickle=False``: nothing the child sends can execute code in the parent. No
TensorFlow is imported on either side (unless ``runtime="tensorflow"``).

The child never outlives the parent: on Linux it asks the kernel for SIGKILL when the parent
dies (prctl PR_SET_PDEATHSIG), and everywhere a watchdog thread exits it once its parent pid
changes; it runs in its own session, so a terminal's Ctrl-C reaches only the parent, which
stops the child itself (``close``).
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.core.errors import ModelFileError, QatError, first_line
from pipeline.tflite import feeding
from pipeline.tflite.runtime import ModelRunner
from pipeline.tflite.tflite_model import TFLiteModel, read_file

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_MB = 4096
WATCHDOG_POLL_S = 0.5
# Test hook: the child sleeps this long before each request (tests kill the parent meanwhile).
DELAY_ENV = "QAT_ISOLATED_TEST_DELAY_S"
_PARENT_ENV = "QAT_ISOLATED_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _child_setup(mb: int, parent: int):
    def apply():  # runs in the child between fork and exec: async-signal-safe work only
        import resource

        limit = mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dumps of crashes
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            except (OSError, AttributeError):
                pass  # the watchdog thread still ends the child
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)
    return apply


class IsolatedInterpreter:
    """A persistent child process that loads and runs models on request.

    A crash, a timeout or a memory blow-up of the child raises ``ModelFileError`` (exit 2) in
    the parent; the next request starts a fresh child.
    """

    def __init__(self, *, runtime: str | None = None, num_threads: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB):
        self.runtime, self.num_threads = runtime, num_threads
        self.timeout, self.memory_mb = timeout, memory_mb
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self.restarts = 0

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _start(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._proc is not None:
            self.restarts += 1
        if self._stderr is None:  # an anonymous file: gone when closed, whatever happens
            self._stderr = tempfile.TemporaryFile(prefix="qat-isolated-")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
               _PARENT_ENV: str(os.getpid())}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        posix = os.name == "posix"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tflite.isolated"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, env=env, start_new_session=posix,
            preexec_fn=_child_setup(self.memory_mb, os.getpid()) if posix else None)
        return self._proc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.stdin.close()
                    proc.wait(timeout=2)
                except Exception:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except Exception:
                    pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- requests -------------------------------------------------------------------------
    def _kill(self, proc) -> None:
        proc.kill()
        proc.wait()

    def _request(self, req: dict, payload: list[bytes], source: str,
                 deadline: float) -> tuple[dict, bytes]:
        proc = self._start()
        try:
            proc.stdin.write((json.dumps(req) + "\n").encode())
            for part in payload:
                proc.stdin.write(part)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone; reported below
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline() if ready else b""
        if not ready:
            self._kill(proc)
            raise ModelFileError(f"The interpreter did not finish within {self.timeout:g} s",
                                 source, "The model may be crafted to hang; do not ship it, or "
                                 "raise --timeout if it is just very large")
        if not line:
            code = proc.wait()
            raise ModelFileError(f"The LiteRT interpreter crashed ({_describe_exit(code)}) "
                                 "while loading or running the model", source,
                                 "The file is corrupt or crafted; re-export it with the "
                                 "TFLite converter")
        try:
            reply = json.loads(line)
            size = int(reply.get("outputs_bytes", 0))
        except (ValueError, TypeError, AttributeError):
            self._kill(proc)
            raise ModelFileError("The interpreter child sent a malformed reply", source,
                                 "Rerun with --debug and report it")
        data = proc.stdout.read(size) if size > 0 else b""
        if len(data) != size:
            code = proc.wait()
            raise ModelFileError(f"The LiteRT interpreter crashed ({_describe_exit(code)}) "
                                 "while returning the outputs", source,
                                 "The file is corrupt or crafted; re-export it with the "
                                 "TFLite converter")
        if not reply.get("ok"):
            raise ModelFileError(f"The interpreter rejected the model: {reply.get('error')}",
                                 source, reply.get("fix") or
                                 "Check the file is a valid .tflite for this runtime")
        return reply, data

    def run(self, model: bytes | str | os.PathLike, x: np.ndarray | list | None = None, *,
            batch_size: int = 0, dequantize: bool = True, precheck: bool = True,
            source: str | None = None) -> tuple[list[np.ndarray], dict]:
        """Load ``model`` in the child and run ``x`` (or one zero input if None): an array,
        arrays in the model's input order, or {input name: array} (matched by name here).

        ``source`` names the model in error messages (default: its path, or "<bytes>").
        ``self.timeout`` covers the pre-check in this process as well as the child's work.
        Returns (outputs, description of inputs/outputs)."""
        deadline = time.monotonic() + self.timeout
        if isinstance(model, (bytes, bytearray, memoryview)):
            content, source = bytes(model), source or "<bytes>"
        else:
            source = source or os.fspath(model)
            content = read_file(model)
        view = None
        if precheck or isinstance(x, dict):  # TFLiteFormatError on bad files
            view = TFLiteModel.from_bytes(content, source=source, deadline=deadline)
        if isinstance(x, dict):  # by name, here: the child gets them in its input order
            x = feeding.order(feeding.slots_of_model(view), x, source)
        inputs = b""
        if x is not None:
            arrays = [x] if isinstance(x, np.ndarray) else list(x)
            buf = io.BytesIO()
            np.savez(buf, *arrays)
            inputs = buf.getvalue()
        req = {"source": source, "model_bytes": len(content), "inputs_bytes": len(inputs),
               "batch_size": int(batch_size), "dequantize": bool(dequantize),
               "runtime": self.runtime, "num_threads": self.num_threads}
        reply, data = self._request(req, [content, inputs], source, deadline)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            outs = [npz[f"arr_{k}"] for k in range(len(npz.files))]
        return outs, reply["describe"]


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    if code in (137, -9):
        return "killed, probably out of memory"
    return f"exit code {code}"


def run_isolated(model, x=None, **kwargs) -> tuple[list[np.ndarray], dict]:
    """One-shot: start a child, run, stop it."""
    opts = {k: kwargs.pop(k) for k in ("runtime", "num_threads", "timeout", "memory_mb")
            if k in kwargs}
    with IsolatedInterpreter(**opts) as child:
        return child.run(model, x, **kwargs)


# ---------------------------------------------------------------------------------------------
# Child side
# ---------------------------------------------------------------------------------------------
def _watch_parent(parent: int) -> None:
    """Portable fallback of PR_SET_PDEATHSIG: exit as soon as the parent is gone."""
    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(WATCHDOG_POLL_S)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n) if n > 0 else b""
    if len(data) != n:
        raise EOFError
    return data


def _serve() -> None:
    parent = int(os.environ.get(_PARENT_ENV) or os.getppid())
    _watch_parent(parent)
    # The protocol owns fd 0 and fd 1; anything native code prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    delay = float(os.environ.get(DELAY_ENV) or 0)
    while True:
        line = stdin.readline()
        if not line:
            return
        try:
            req = json.loads(line)
            content = _read_exact(stdin, int(req["model_bytes"]))
            inputs = _read_exact(stdin, int(req["inputs_bytes"]))
        except (ValueError, KeyError, TypeError, EOFError):
            return  # the parent went away mid-request, or is not our parent
        if delay:
            time.sleep(delay)
        payload = b""
        try:
            runner = ModelRunner(content, batch_size=req["batch_size"],
                                 runtime=req.get("runtime"), num_threads=req.get("num_threads"),
                                 source=req.get("source"))
            if inputs:
                with np.load(io.BytesIO(inputs), allow_pickle=False) as npz:
                    arrays = [npz[f"arr_{k}"] for k in range(len(npz.files))]
            else:
                arrays = [np.zeros((1, *[max(1, d) for d in s.shape[1:]]), s.dtype)
                          for s in runner.inputs]
            outs = runner.run(arrays, dequantize=req["dequantize"])
            buf = io.BytesIO()
            np.savez(buf, *outs)
            payload = buf.getvalue()
            reply = {"ok": True, "describe": runner.describe(), "outputs_bytes": len(payload)}
        except QatError as exc:  # our own one-line error: its parts, without a second source
            reply = {"ok": False, "error": exc.what[:300], "fix": exc.fix}
        except Exception as exc:  # a Python-level error: report it, keep serving
            reply = {"ok": False, "error": f"{type(exc).__name__}: {first_line(exc, 300)}"}
        proto.write((json.dumps(reply) + "\n").encode() + payload)
        proto.flush()


if __name__ == "__main__":
    _serve()
