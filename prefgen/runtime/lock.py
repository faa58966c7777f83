"""One writer per ledger and per output: an advisory lock held for the whole run."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

import orjson

from prefgen.errors import Locked


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold `<path>.lock` for the duration; refuse at once, naming the holder, if it is taken.

    The kernel drops the lock when the process dies, however it dies, so a crash never leaves
    a stale lock behind (only the file, harmlessly). A holder removes the file when it lets go,
    so a run, or a refused start, leaves the directory as it found it; a process that locked a
    file removed meanwhile (the name now names another file, or none) tries again.
    """
    target = lock_path(Path(path))
    while True:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise Locked(
                f"{path} is in use by another prefgen process ({holder})",
                hint="wait for it to finish, or stop it (Ctrl-C or kill PID) and run again",
            ) from None
        if _same_file(fd, target):
            break
        os.close(fd)  # its holder removed it as we opened it: lock the file the name now names
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "argv": sys.argv,
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, orjson.dumps(info), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            if _same_file(fd, target):
                target.unlink()  # still holding it: nobody else can be inside
        os.close(fd)


def _same_file(fd: int, target: Path) -> bool:
    """Whether `target` still names the file open at `fd`."""
    try:
        return os.stat(target).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _describe(raw: bytes) -> str:
    try:
        info = orjson.loads(raw)
        return f"pid {info['pid']} on {info['host']}, since {info['since']}: {' '.join(info['argv'])}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "holder unknown"
