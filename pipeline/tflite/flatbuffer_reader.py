"""A bounds-checked reader for flatbuffers (tables, vtables, vectors, strings).

Every offset and length is checked against the buffer before it is read, so a truncated or
crafted file raises TFLiteFormatError instead of reading out of bounds. Used by
tflite_model.py to walk the LiteRT schema without the flatbuffers package.

The walk's work is bounded by the file's size: offsets may point anywhere, so a small crafted
file can make many vector entries (or many subgraphs) point at the same table or vector and
expand a 220 KB file into billions of entries. Each table is visited once (memoized by its
offset), and every table visited, every 4-byte word of a vector or string read is charged to a
budget of ``WORK_PER_BYTE`` units per byte of file (+ ``WORK_BASE``): a file whose objects do
not overlap - everything a flatbuffers builder writes - needs at most one unit per 4 bytes, so
the budget (0.5 per byte) is twice what any real model needs, and a file that repeats offsets
to amplify its content fails fast. An optional deadline bounds the wall time as well.
"""

from __future__ import annotations

import struct
import time

from pipeline.core.errors import ModelFileError

# Limits that no real mobile model reaches; a crafted file claiming more is rejected early.
_MAX_ELEMENTS = 1 << 24
WORK_PER_BYTE = 0.5
WORK_BASE = 4096
_DEADLINE_EVERY = 1 << 14  # units of work between two looks at the clock


class TFLiteFormatError(ModelFileError):
    """The bytes are not a well-formed .tflite flatbuffer."""


class Buf:
    def __init__(self, data: bytes, source: str, *, deadline: float | None = None,
                 budget: int | None = None):
        self.data = data
        self.size = len(data)
        self.source = source
        self.deadline = deadline  # time.monotonic() value, or None
        self.budget = int(self.size * WORK_PER_BYTE) + WORK_BASE if budget is None else budget
        self.work = 0
        self._next_clock = _DEADLINE_EVERY
        self._tables: dict[int, Table] = {}

    def charge(self, units: int, pos: int | None = None) -> None:
        """Count ``units`` of work; fail once the file's budget or the deadline is spent."""
        self.work += units
        if self.work > self.budget:
            raise TFLiteFormatError(
                f"Malformed .tflite flatbuffer: reading it takes more than {self.budget:,} "
                f"steps, the most a {self.size:,}-byte file can need (repeated offsets "
                f"amplify its content)" + (f" at byte {pos}" if pos is not None else ""),
                self.source, "The file is crafted or corrupted; do not load it. Re-export "
                "the model with the TFLite converter")
        if self.deadline is not None and self.work >= self._next_clock:
            self._next_clock = self.work + _DEADLINE_EVERY
            if time.monotonic() > self.deadline:
                raise TFLiteFormatError(
                    "The .tflite structural pre-check did not finish within the timeout",
                    f"{self.source} ({self.work:,} steps done)",
                    "The file may be crafted to be slow to check; raise --timeout only for "
                    "a file you trust")

    def table(self, pos: int) -> "Table":
        """The table at ``pos``, parsed once however often it is referenced."""
        t = self._tables.get(pos)
        if t is None:
            self.charge(1, pos)
            t = self._tables[pos] = Table(self, pos)
        return t

    def fail(self, detail: str, offset: int | None = None) -> TFLiteFormatError:
        where = f" at byte {offset}" if offset is not None else ""
        return TFLiteFormatError(f"Malformed .tflite flatbuffer: {detail}{where}", self.source,
                                 "The file is truncated, corrupted or not a TFLite model; "
                                 "re-export it with the TFLite converter")

    def need(self, pos: int, n: int) -> None:
        if pos < 0 or n < 0 or pos + n > self.size:
            raise self.fail(f"read of {n} bytes out of range (file has {self.size})", pos)

    def u8(self, pos):
        self.need(pos, 1)
        return self.data[pos]

    def i8(self, pos):
        self.need(pos, 1)
        return struct.unpack_from("<b", self.data, pos)[0]

    def u16(self, pos):
        self.need(pos, 2)
        return struct.unpack_from("<H", self.data, pos)[0]

    def i32(self, pos):
        self.need(pos, 4)
        return struct.unpack_from("<i", self.data, pos)[0]

    def u32(self, pos):
        self.need(pos, 4)
        return struct.unpack_from("<I", self.data, pos)[0]

    def u64(self, pos):
        self.need(pos, 8)
        return struct.unpack_from("<Q", self.data, pos)[0]


class Table:
    """A flatbuffer table: field lookups through its vtable, every offset checked."""

    __slots__ = ("buf", "pos", "vt", "vt_len")

    def __init__(self, buf: Buf, pos: int):
        self.buf = buf
        self.pos = pos
        vt = pos - buf.i32(pos)
        vt_len = buf.u16(vt)
        if vt_len < 4 or vt_len % 2:
            raise buf.fail(f"bad vtable length {vt_len}", vt)
        buf.need(vt, vt_len)
        self.vt, self.vt_len = vt, vt_len

    def _field(self, i: int) -> int:
        o = 4 + 2 * i
        if o >= self.vt_len:
            return 0
        return self.buf.u16(self.vt + o)

    def scalar(self, i: int, fmt: str, default=0):
        off = self._field(i)
        if not off:
            return default
        size = struct.calcsize("<" + fmt)
        self.buf.need(self.pos + off, size)
        return struct.unpack_from("<" + fmt, self.buf.data, self.pos + off)[0]

    def _indirect(self, i: int) -> int | None:
        off = self._field(i)
        if not off:
            return None
        p = self.pos + off
        return p + self.buf.u32(p)

    def table(self, i: int) -> "Table | None":
        p = self._indirect(i)
        return None if p is None else self.buf.table(p)

    def _vector(self, i: int, elem: int) -> tuple[int, int] | None:
        p = self._indirect(i)
        if p is None:
            return None
        n = self.buf.u32(p)
        if n > _MAX_ELEMENTS:
            raise self.buf.fail(f"vector claims {n} elements", p)
        self.buf.need(p + 4, n * elem)
        return p + 4, n

    def _charged_vector(self, i: int, elem: int) -> tuple[int, int] | None:
        v = self._vector(i, elem)
        if v is not None:
            self.buf.charge(1 + (v[1] * elem + 3) // 4, v[0] - 4)
        return v

    def vector(self, i: int, fmt: str) -> tuple:
        v = self._charged_vector(i, struct.calcsize("<" + fmt))
        if v is None:
            return ()
        start, n = v
        return struct.unpack_from(f"<{n}{fmt}", self.buf.data, start)

    def vector_span(self, i: int) -> tuple[int, int]:
        """(start, length) of a ubyte vector without copying it."""
        v = self._vector(i, 1)
        if v is not None:
            self.buf.charge(1, v[0] - 4)  # not copied: one unit whatever its length
        return (0, 0) if v is None else v

    def tables(self, i: int) -> list["Table"]:
        v = self._charged_vector(i, 4)
        if v is None:
            return []
        start, n = v
        return [self.buf.table(start + 4 * k + self.buf.u32(start + 4 * k)) for k in range(n)]

    def string(self, i: int) -> str | None:
        p = self._indirect(i)
        if p is None:
            return None
        n = self.buf.u32(p)
        self.buf.need(p + 4, n)
        self.buf.charge(1 + (n + 3) // 4, p)
        return self.buf.data[p + 4: p + 4 + n].decode("utf-8", errors="replace")
