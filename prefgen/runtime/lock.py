"""One writer per ledger and per output: an advisory lock held for the whole run.

A writer holds `<path>.lock` exclusively (flock) and writes who it is into the file. A reader
of a ledger (`shared`) takes the same lock shared for the few milliseconds of its read when no
writer holds it: that tells it no process is writing (the run whose `runs` row says `running`
is dead when the lock is free, or held by another process), and keeps a writer from starting
mid-read. A writer that finds only readers waits for them (READER_WAIT_S) instead of refusing.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson

from prefgen.errors import Locked

READER_WAIT_S = 30.0  # how long a writer waits for readers (each holds the lock for one read)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold `<path>.lock` for the duration; refuse at once, naming the holder, if it is taken.

    The kernel drops the lock when the process dies, however it dies, so a crash never leaves
    a stale lock behind (only the file, harmlessly: readers look at it to tell a live run from a
    dead one). A start refused before it made `path` removes the lock file it made, so it leaves
    the directory as it found it; a process that locked a file removed meanwhile (the name now
    names another file, or none) tries again.
    """
    target = lock_path(Path(path))
    created = not target.exists()
    while True:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _take(fd, path)
        except BaseException:
            os.close(fd)
            raise
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
            if created and not Path(path).exists() and _same_file(fd, target):
                target.unlink()  # a start refused before it made the file: nothing left behind
        os.close(fd)


def _same_file(fd: int, target: Path) -> bool:
    """Whether `target` still names the file open at `fd`."""
    try:
        return os.stat(target).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _take(fd: int, path: str | Path) -> None:
    """Take the lock exclusively; wait while only readers hold it (shared, one read each),
    refuse at once while a writer holds it."""
    deadline = time.monotonic() + READER_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted only when no writer holds it
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            raise Locked(
                f"{path} is in use by another prefgen process ({holder})",
                hint="wait for it to finish, or stop it (Ctrl-C or kill PID) and run again",
            ) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
        if time.monotonic() > deadline:
            raise Locked(
                f"{path} is being read by another prefgen process (prefgen ledger, export or merge)",
                hint="wait for it to finish and run again",
            )
        time.sleep(0.02)


@dataclass
class Reader:
    """What a reader found at `<path>.lock`: `writer`, the holder's {pid, host, argv, since}
    ({} when unreadable) while a process holds it exclusively, else None; `fd`, the lock held
    shared when no writer held it (None when there is no lock file), until `release()`."""

    writer: dict | None
    fd: int | None = None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the shared lock
            self.fd = None

    def holds(self, pid: int | None, host: str | None) -> bool:
        """Whether the process `pid` on `host` (a `runs` row's) is the writer holding the lock;
        a holder that cannot be read counts as it."""
        if self.writer is None:
            return False
        if "pid" not in self.writer:
            return True
        return (self.writer.get("pid"), self.writer.get("host")) == (pid, host)


def shared(path: str | Path) -> Reader:
    """Look at `<path>.lock` without writing anything: hold it shared when no writer holds it.

    No lock file (a copied ledger) or one that cannot be opened: no writer, nothing held."""
    target = lock_path(Path(path))
    try:
        fd = os.open(target, os.O_RDONLY)
    except FileNotFoundError:
        try:  # a copied or moved ledger: make its lock, where the storage allows, so a writer waits
            fd = os.open(target, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            return Reader(None)  # read-only storage: no writer can be at work there either
    except OSError:
        return Reader(None)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        if not _same_file(fd, target):  # its writer removed it as it ended: look again
            os.close(fd)
            return shared(path)
    except OSError:
        try:
            raw = os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
        try:
            info = orjson.loads(raw)
        except orjson.JSONDecodeError:
            info = None
        return Reader(info if isinstance(info, dict) else {})
    return Reader(None, fd)


def _describe(raw: bytes) -> str:
    try:
        info = orjson.loads(raw)
        return f"pid {info['pid']} on {info['host']}, since {info['since']}: {' '.join(info['argv'])}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "holder unknown"
