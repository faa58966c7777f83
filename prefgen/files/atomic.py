"""Write a file whole or not at all: every command that writes a file by rename writes it here.

The bytes go to a temporary file in the same directory (a rename is atomic only within one
file system), which is flushed and fsynced before it replaces the target, and the directory is
fsynced after, so that after a crash or power loss the target holds either its old bytes or all
of the new ones. On any error the temporary file is removed and the target left as it was.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator

from prefgen.errors import OutputError


class AtomicFile:
    """The handle `atomic_write` yields: bytes written to it reach the target when the block ends."""

    def __init__(self, handle: BinaryIO, target: Path):
        self.handle, self.target = handle, target

    def write(self, data: bytes) -> int:
        """Write `data`; a full disk or an I/O error becomes an OutputError naming the target."""
        try:
            return self.handle.write(data)
        except OSError as exc:
            raise _cannot_write(self.target, exc) from exc


def _cannot_write(target: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"cannot write {target}: {exc.strerror or exc}",
        hint=f"{target} was left as it was: free some space or check the disk, then run the command again",
    )


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync directories; the rename is still atomic
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(target: str | Path, temp_suffix: str = ".tmp") -> Iterator[AtomicFile]:
    """Stream bytes into `target`, which is replaced by rename only when the block ends without
    an error; TARGET + `temp_suffix` holds them meanwhile and is removed on any error."""
    target = Path(target)
    temp = target.with_name(target.name + temp_suffix)
    try:
        handle = open(temp, "wb")
    except OSError as exc:
        raise _cannot_write(target, exc) from exc
    try:
        with handle:
            yield AtomicFile(handle, target)
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise _cannot_write(target, exc) from exc
        try:
            os.replace(temp, target)
        except OSError as exc:
            raise _cannot_write(target, exc) from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)
