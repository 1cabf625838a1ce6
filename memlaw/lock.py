"""One writer per output folder.

Two `memplan calibrate --out cal/x` (or two shards pointed at one folder by mistake) would both
append the same points. :class:`FolderLock` takes an exclusive ``fcntl.flock`` on
``FOLDER/.memlaw.lock`` and writes the holder (pid, host, command, start time) into it, so a second
writer is refused with one line naming the first. The kernel drops a flock when its process dies,
however it dies (SIGKILL included), so a lock left by a killed run never blocks: the file stays,
the lock does not.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import time
from pathlib import Path

from memlaw.errors import UserError

LOCK_NAME = ".memlaw.lock"


class FolderLock:
    """``with FolderLock(folder, option="--out"):`` — exclusive use of ``folder`` (created if
    missing, and removed again on release when the lock file is all it holds)."""

    def __init__(self, folder, option: str = "--out"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.option = option
        self.fd: int | None = None
        self.created = False

    def __enter__(self):
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError("exists and is not a folder", where=str(self.folder), fix=f"choose another {self.option}")
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self.created = True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                self._cleanup()
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise UserError(f"in use by another memlaw run ({self._holder()})", where=str(self.folder),
                                    fix=f"wait for it to finish, or give this run another {self.option}") from None
                raise UserError(f"cannot lock this folder ({e.strerror}): its file system does not support "
                                "file locks", where=str(self.folder),
                                fix=f"choose an {self.option} on a local disk") from None
            # A releasing holder may have unlinked the file we opened: lock the file that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']} since {info['since']}: {info['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "its pid is not yet written"

    def _cleanup(self) -> None:
        if self.created:  # we made the folder for nothing: leave no trace
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def __exit__(self, *exc):
        if self.fd is None:
            return False
        try:
            if self.created and {p.name for p in self.folder.iterdir()} == {LOCK_NAME}:
                self.path.unlink()  # while still locked: a waiter re-checks the inode (see above)
                self.folder.rmdir()
            else:
                os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)  # releases the flock
        self.fd = None
        return False


def locks_folder(arg: str = "out", option: str = "--out"):
    """Decorator: run the function holding a :class:`FolderLock` on its argument ``arg``."""

    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with FolderLock(sig.bind(*args, **kwargs).arguments[arg], option=option):
                return fn(*args, **kwargs)

        return wrapper

    return deco
