"""A bounds-checked reader for flatbuffers (tables, vtables, vectors, strings).

Every offset and length is checked against the buffer before it is read, so a truncated or
crafted file raises TFLiteFormatError instead of reading out of bounds. Used by
tflite_model.py to walk the LiteRT schema without the flatbuffers package.
"""

from __future__ import annotations

import struct

from pipeline.errors import ModelFileError

# Limits that no real mobile model reaches; a crafted file claiming more is rejected early.
_MAX_ELEMENTS = 1 << 24


class TFLiteFormatError(ModelFileError):
    """The bytes are not a well-formed .tflite flatbuffer."""


class Buf:
    def __init__(self, data: bytes, source: str):
        self.data = data
        self.size = len(data)
        self.source = source

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
        return None if p is None else Table(self.buf, p)

    def _vector(self, i: int, elem: int) -> tuple[int, int] | None:
        p = self._indirect(i)
        if p is None:
            return None
        n = self.buf.u32(p)
        if n > _MAX_ELEMENTS:
            raise self.buf.fail(f"vector claims {n} elements", p)
        self.buf.need(p + 4, n * elem)
        return p + 4, n

    def vector(self, i: int, fmt: str) -> tuple:
        v = self._vector(i, struct.calcsize("<" + fmt))
        if v is None:
            return ()
        start, n = v
        return struct.unpack_from(f"<{n}{fmt}", self.buf.data, start)

    def vector_span(self, i: int) -> tuple[int, int]:
        """(start, length) of a ubyte vector without copying it."""
        v = self._vector(i, 1)
        return (0, 0) if v is None else v

    def tables(self, i: int) -> list["Table"]:
        v = self._vector(i, 4)
        if v is None:
            return []
        start, n = v
        return [Table(self.buf, start + 4 * k + self.buf.u32(start + 4 * k)) for k in range(n)]

    def string(self, i: int) -> str | None:
        p = self._indirect(i)
        if p is None:
            return None
        n = self.buf.u32(p)
        self.buf.need(p + 4, n)
        return self.buf.data[p + 4: p + 4 + n].decode("utf-8", errors="replace")
