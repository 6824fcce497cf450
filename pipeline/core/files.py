"""Bounded reads of input files: every file the pipeline reads is checked first.

One place for the checks every reader needs before it opens a user-supplied path (recipe TOML,
data ``.npz``, Keras ``.h5``/``.keras``/SavedModel, ``.tflite``, reference bundles): the path must be a *regular* file (not a
FIFO, a device such as ``/dev/zero``, a socket or a directory) and no larger than the limit of
its kind, so a wrong path gives a one-line error that names what the path really is, and a huge
or endless file is refused before a byte of it is read.

Limits (bytes), per kind:

    recipe   1 MiB   (a TOML recipe is a few hundred bytes)
    data     4 GiB   (.npz: the file, and the total uncompressed size of its arrays)
    model    4 GiB   (.h5/.keras file, SavedModel directory in total, .keras uncompressed)

``QAT_MAX_INPUT_BYTES`` (an integer number of bytes) overrides the data and model limits, e.g.
for bigger models on a machine with the memory for them. A zip archive (.keras) whose contents
expand more than ``MAX_ZIP_RATIO`` times its size (above ``ZIP_RATIO_FLOOR`` bytes in total) is
refused as a likely zip bomb; ``.npz`` arrays are instead checked member by member against their
``.npy`` headers (pipeline/stages/data.py).
"""

from __future__ import annotations

import os
import stat
import zipfile

from pipeline.core.errors import QatError, first_line

MIB = 1 << 20
GIB = 1 << 30
LIMITS = {"recipe": 1 * MIB, "data": 4 * GIB, "model": 4 * GIB}
ENV_LIMIT = "QAT_MAX_INPUT_BYTES"
MAX_ZIP_RATIO = 100
ZIP_RATIO_FLOOR = 64 * MIB

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def limit(kind: str) -> int:
    """The size limit for ``kind`` (recipe | data | model), with the env override."""
    base = LIMITS[kind]
    if kind == "recipe":
        return base
    raw = os.environ.get(ENV_LIMIT, "").strip()
    if not raw:
        return base
    try:
        value = int(raw)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise QatError(f"{ENV_LIMIT} must be a positive whole number of bytes", repr(raw),
                       f"Unset it or use e.g. {ENV_LIMIT}={8 * GIB}")
    return value


def human(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def describe_mode(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _stat(path, error: type[QatError], what: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise error(f"The {what} does not exist", os.fspath(path), "Check the path")
    except NotADirectoryError:
        raise error(f"The {what} does not exist (a parent in its path is a file)",
                    os.fspath(path), "Check the path")
    except ValueError:  # embedded NUL
        raise error(f"The {what} path is not a valid path", repr(os.fspath(path)),
                    "Remove the NUL character from the path")
    except OSError as exc:
        raise error(f"The {what} cannot be read", f"{os.fspath(path)} ({exc.strerror})",
                    "Check the path and its permissions")


def _refuse(st: os.stat_result, path, what: str, cap: int, error, kind: str | None) -> None:
    """``error`` unless ``st`` is a regular file of at most ``cap`` bytes."""
    if not stat.S_ISREG(st.st_mode):
        raise error(f"The {what} is {describe_mode(st.st_mode)}, not a regular file",
                    os.fspath(path), "Pass the path of a regular file")
    _check_size(st.st_size, path, what, cap, error, kind)


def _check_size(size: int, path, what: str, cap: int, error, kind: str | None) -> None:
    if size <= cap:
        return
    if kind is None:
        raise error(f"The {what} is too large ({size:,} bytes; the limit is {cap:,})",
                    os.fspath(path), f"Pass a {what} of at most {cap:,} bytes")
    fix = "Pass a smaller file" + ("" if kind == "recipe" else
                                    f", or raise the limit with {ENV_LIMIT}=BYTES")
    raise error(f"The {what} is larger than the {human(cap)} limit for {kind} files",
                f"{os.fspath(path)} ({size:,} bytes)", fix)


def check_file(path, kind: str, error: type[QatError], what: str) -> os.stat_result:
    """The stat of ``path`` if it is a regular file within the limit of ``kind``; otherwise
    ``error`` (a QatError subclass) naming what the path is. For files another library opens
    (h5py, zipfile); files read here go through open_regular / read_regular."""
    st = _stat(path, error, what)
    _refuse(st, path, what, limit(kind), error, kind)
    return st


def open_regular(path, what: str, cap: int, error: type[QatError], kind: str | None = None):
    """Open ``path`` for reading if it is a regular file of at most ``cap`` bytes: (binary
    file object, size). Anything else fails at once with ``error`` (one line): a FIFO would
    block the open or the read forever, a device never ends, a huge file is not read at all.
    Checked with stat() before opening and again on the opened descriptor; O_NONBLOCK, so a
    path swapped for a FIFO in between does not wait for a writer."""
    _refuse(_stat(path, error, what), path, what, cap, error, kind)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) |
                     getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise error(f"The {what} cannot be read", f"{os.fspath(path)} ({exc.strerror})",
                    "Check the path and its permissions")
    f = os.fdopen(fd, "rb")
    try:
        st = os.fstat(f.fileno())
        _refuse(st, path, what, cap, error, kind)
    except BaseException:
        f.close()
        raise
    return f, st.st_size


def read_regular(path, what: str, cap: int, error: type[QatError],
                 kind: str | None = None) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes (see open_regular); a file that
    grew after the check is refused too."""
    f, _ = open_regular(path, what, cap, error, kind)
    with f:
        data = f.read(cap + 1)
    _check_size(len(data), path, what, cap, error, kind)
    return data


def read_bytes(path, kind: str, error: type[QatError], what: str) -> bytes:
    """The bytes of a checked regular file within the limit of ``kind``."""
    return read_regular(path, what, limit(kind), error, kind)


def check_tree(path, kind: str, error: type[QatError], what: str) -> int:
    """Total bytes of the regular files under directory ``path``; refuses special files
    (FIFOs, devices, sockets) anywhere in it and a total above the limit of ``kind``."""
    total = 0
    cap = limit(kind)
    for root, dirs, names in os.walk(path):
        for name in names:
            p = os.path.join(root, name)
            st = _stat(p, error, f"file {name} of the {what}")
            if not stat.S_ISREG(st.st_mode):
                raise error(f"A file in the {what} is {describe_mode(st.st_mode)}, not a "
                            "regular file", p, "Remove it from the directory")
            total += st.st_size
            if total > cap:
                raise error(f"The {what} is larger than the {human(cap)} limit for {kind} "
                            "files", f"{os.fspath(path)} (more than {total:,} bytes)",
                            f"Pass a smaller model, or raise the limit with {ENV_LIMIT}=BYTES")
    return total


def check_zip(z: zipfile.ZipFile, path, kind: str, error: type[QatError], what: str, *,
              ratio: bool = True) -> int:
    """Total uncompressed size of an open archive, checked against the limit of ``kind`` and
    (``ratio``) against ``MAX_ZIP_RATIO`` times the archive's own size (a zip bomb), before
    any member is extracted. The zip directory states each member's size; zipfile never
    inflates a member past it (it raises on a CRC/size mismatch)."""
    infos = z.infolist()
    total = sum(max(i.file_size, 0) for i in infos)
    cap = limit(kind)
    if total > cap:
        raise error(f"The {what} expands to more than the {human(cap)} limit for {kind} files",
                    f"{os.fspath(path)} ({total:,} bytes uncompressed in {len(infos)} members)",
                    f"Pass a smaller archive, or raise the limit with {ENV_LIMIT}=BYTES")
    size = max(os.stat(path).st_size, 1)
    if ratio and total > ZIP_RATIO_FLOOR and total > MAX_ZIP_RATIO * size:
        raise error(f"The {what} expands {total / size:.0f}x (more than {MAX_ZIP_RATIO}x): "
                    "a zip bomb or a corrupt archive", f"{os.fspath(path)} ({size:,} bytes -> "
                    f"{total:,} bytes)", "Re-save the model; a real model compresses little")
    return total


def check_hdf5_signature(path, error: type[QatError], what: str, size: int) -> None:
    """HDF5's 8-byte signature at offset 0 or a power of two from 512 (a user block)."""
    offsets = [0]
    o = 512
    while o + 8 <= size:
        offsets.append(o)
        o *= 2
    try:
        with open(path, "rb") as f:
            for off in offsets:
                f.seek(off)
                if f.read(8) == HDF5_SIGNATURE:
                    return
    except OSError as exc:
        raise error(f"The {what} cannot be read", f"{os.fspath(path)} ({exc.strerror})",
                    "Check the path and its permissions")
    raise error(f"The {what} is not an HDF5 file (no HDF5 signature)", os.fspath(path),
                "Save the model with tf_keras model.save('model.h5'), or pass the right file")


def check_npy_member(z: zipfile.ZipFile, member: str, where: str,
                     error: type[QatError]) -> None:
    """Read only the .npy header of a member and check it against the member's size before
    numpy allocates anything: object dtypes (pickle) and a shape claiming more bytes than
    the member holds (a truncated or forged array; numpy would try to allocate it) fail."""
    from numpy.lib import format as npy

    info = z.getinfo(member)
    with z.open(info) as f:
        try:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, EOFError, SyntaxError, TypeError) as exc:
            raise error("An array of the .npz has no valid .npy header",
                            f"{where} ({first_line(exc)})",
                            "Write the file with numpy.savez")
        header_end = f.tell()
    if dtype.hasobject:
        raise error("The .npz holds object arrays, which need pickle to load",
                        f"{where} (dtype {dtype})", "Save numeric arrays only")
    count = 1
    for d in shape:
        count *= int(d)
    need = count * dtype.itemsize
    have = info.file_size - header_end
    if need > have:
        raise error("An array of the .npz is truncated (its header declares more data "
                        "than the file holds)",
                        f"{where}: shape {tuple(shape)} {dtype} needs {need:,} bytes, "
                        f"the member holds {max(have, 0):,}",
                        "Write the file again with numpy.savez; the copy is incomplete or "
                        "corrupt")
