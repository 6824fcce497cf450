"""Native output: what C++ libraries (TensorFlow, the converter, LiteRT) print straight to the
process's file descriptors 1 and 2, bypassing Python's sys.stdout/sys.stderr."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def quiet_native_output(enabled: bool = True):
    """Silence what native code prints straight to fds 1/2 (the converter's
    "fully_quantize: 0, ..." line, LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate").
    The text is kept and replayed to stderr if the block raises, so nothing useful is lost."""
    if not enabled:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if failed:
                sink.seek(0)
                text = sink.read().decode(errors="replace").strip()
                if text:
                    print(text, file=sys.stderr)
