"""Run untrusted .tflite files in a child process, so a native crash becomes a clear error.

TFLite's Python loader does not run the flatbuffer verifier; a truncated or crafted file can
crash the process (LiteRT#10080; CVE-2020-15211, CVE-2021-29605, CVE-2022-23559). Files the
pipeline did not just write are therefore (1) pre-checked in Python (``tflite_model``: header,
every offset and index, buffer sizes) and (2) loaded and invoked in a child process with an
address-space limit and a timeout. The child speaks JSON lines on stdin/stdout and exchanges
arrays as .npz files read with ``allow_pickle=False``: nothing the child sends can execute code
in the parent. No TensorFlow is imported on either side (unless ``runtime="tensorflow"``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pipeline.errors import ModelFileError, UsageError
from pipeline.tflite_model import TFLiteModel, read_file

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_MB = 4096


def _limit_memory(mb: int):
    def apply():  # runs in the child between fork and exec
        import resource

        limit = mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dumps of crashes
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
        self._dir = Path(tempfile.mkdtemp(prefix="qat-isolated-"))
        self._stderr = None
        self.restarts = 0

    # -- lifecycle ------------------------------------------------------------------------
    def _start(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._proc is not None:
            self.restarts += 1
        self._stderr = open(self._dir / "child.stderr", "w+b")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.isolated"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, env=env,
            preexec_fn=_limit_memory(self.memory_mb) if os.name == "posix" else None)
        return self._proc

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=5)
            except Exception:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._stderr:
            self._stderr.close()
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)

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
    def _request(self, req: dict, source: str) -> dict:
        proc = self._start()
        try:
            proc.stdin.write((json.dumps(req) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone; reported below
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
        line = proc.stdout.readline() if ready else b""
        if not ready:
            proc.kill()
            proc.wait()
            raise ModelFileError(f"The interpreter did not finish within {self.timeout:.0f} s",
                                 source, "The model may be crafted to hang; do not ship it, or "
                                 "raise the timeout if it is just very large")
        if not line:
            code = proc.wait()
            raise ModelFileError(f"The LiteRT interpreter crashed ({_describe_exit(code)}) "
                                 "while loading or running the model", source,
                                 "The file is corrupt or crafted; re-export it with the "
                                 "TFLite converter")
        try:
            reply = json.loads(line)
        except ValueError:
            proc.kill()
            raise ModelFileError("The interpreter child sent a malformed reply", source,
                                 "Rerun with --debug and report it")
        if not reply.get("ok"):
            raise ModelFileError(f"The interpreter rejected the model: {reply.get('error')}",
                                 source, "Check the file is a valid .tflite for this runtime")
        return reply

    def run(self, model: bytes | str | os.PathLike, x: np.ndarray | list | None = None, *,
            batch_size: int = 0, dequantize: bool = True,
            precheck: bool = True) -> tuple[list[np.ndarray], dict]:
        """Load ``model`` in the child and run ``x`` (or one zero input if None).

        Returns (outputs, description of inputs/outputs)."""
        if isinstance(model, (bytes, bytearray)):
            content, source = bytes(model), "<bytes>"
        else:
            source = os.fspath(model)
            content = read_file(source)
        if precheck:
            TFLiteModel.from_bytes(content, source=source)  # TFLiteFormatError on bad files
        model_path = self._dir / "model.tflite"
        model_path.write_bytes(content)
        req = {"model": str(model_path), "batch_size": int(batch_size),
               "dequantize": bool(dequantize), "runtime": self.runtime,
               "num_threads": self.num_threads, "inputs": None,
               "outputs": str(self._dir / "outputs.npz")}
        if x is not None:
            arrays = [x] if isinstance(x, np.ndarray) else list(x)
            np.savez(self._dir / "inputs.npz", *arrays)
            req["inputs"] = str(self._dir / "inputs.npz")
        reply = self._request(req, source)
        with np.load(req["outputs"], allow_pickle=False) as npz:
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
def _serve() -> None:
    # The protocol owns fd 1; anything native code prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from pipeline.runtime import ModelRunner

    for line in sys.stdin:
        try:
            req = json.loads(line)
            runner = ModelRunner(req["model"], batch_size=req["batch_size"],
                                 runtime=req.get("runtime"),
                                 num_threads=req.get("num_threads"))
            if req.get("inputs"):
                with np.load(req["inputs"], allow_pickle=False) as npz:
                    arrays = [npz[f"arr_{k}"] for k in range(len(npz.files))]
            else:
                arrays = [np.zeros((1, *[max(1, d) for d in s.shape[1:]]), s.dtype)
                          for s in runner.inputs]
            outs = runner.run(arrays, dequantize=req["dequantize"])
            np.savez(req["outputs"], *outs)
            reply = {"ok": True, "describe": runner.describe()}
        except Exception as exc:  # a Python-level error: report it, keep serving
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            reply = {"ok": False, "error": f"{type(exc).__name__}: {msg[:300]}"}
        proto.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    _serve()
