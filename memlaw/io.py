"""Atomic file writes: a reader (or a killed process) never sees half a file.

Every file memlaw writes goes through here: write to a temporary file in the same folder, fsync,
then rename over the destination (rename is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

from memlaw.errors import UserError

#: errors that mean "the disk (or the quota, or the file-size limit) is full"
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(e: BaseException) -> bool:
    """Is ``e`` a full disk? Also recognises safetensors' Rust IoError, which has no errno."""
    if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
        return True
    text = str(e)
    return any(m in text for m in ("No space left on device", "StorageFull", "Disk quota exceeded",
                                   "File too large", "FileTooLarge"))


def full_disk_error(path, e: BaseException) -> UserError:
    """The one line a user sees when writing ``path`` ran out of space."""
    text = str(e)
    why = (os.strerror(e.errno) if isinstance(e, OSError) and e.errno in FULL_ERRNOS
           else "File too large" if "File too large" in text or "FileTooLarge" in text
           else "Disk quota exceeded" if "Disk quota exceeded" in text else "No space left on device")
    return UserError(f"cannot write {path}: {why} (nothing was written there; your inputs are untouched)",
                     fix="free some space on that disk, or write the output elsewhere")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, binary: bool = False):
    """``with atomic_writer(p) as f: f.write(...)`` — write a file piece by piece (a large report
    never has to fit in memory as one string), yet atomically: a temporary file in the same folder,
    fsynced, renamed over ``p`` only when the block ends without error. On any error the temporary
    file is removed and ``p`` is as it was; a full disk becomes a :class:`UserError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise full_disk_error(path, e) if disk_full(e) else e
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a report should read like any file
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if disk_full(e):
            raise full_disk_error(path, e) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, binary=True) as f:
        f.write(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(folder: str | os.PathLike) -> None:
    """Give a folder made with mkdtemp (0700) and the files in it (safetensors writes 0600) the
    modes a plain ``mkdir`` and ``open`` would: 0777 / 0666 less the umask, so another account (a
    CI step, a colleague) can read an adapter as it can any file."""
    mask = _umask()
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.iterdir():
        if p.is_file() and not p.is_symlink():
            os.chmod(p, 0o666 & ~mask)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj):
    """JSON forbids NaN/inf: turn them into null, and numpy scalars into Python numbers."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        return json_safe(obj.item())
    return obj


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def append_jsonl(path: str | os.PathLike, obj) -> None:
    """Append one JSON line durably. A line is written with a single write() call and fsynced, so a
    kill leaves at most one truncated last line, which readers of points files skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(obj, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    size = os.fstat(fd).st_size
    try:
        if os.write(fd, line) != len(line):  # a short write is the disk filling up mid-line
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    except OSError as e:
        if not disk_full(e):
            raise
        os.ftruncate(fd, size)  # no half line left behind
        raise full_disk_error(path, e) from None
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
