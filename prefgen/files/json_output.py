"""The JSON array of a `.json` output. A run appends JSON Lines to the output's journal (see
paths.journal_of); the array is written from it, streamed and by rename, when the run is
complete, and by `prefgen repair` and `prefgen merge`. Its items are the journal's lines."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import orjson

from prefgen.errors import InputError, OutputError
from prefgen.files.atomic import atomic_write, fsync_directory


def journal_lines(journal: Path) -> Iterator[bytes]:
    """The lines of a JSON Lines journal, streamed, each checked to be JSON."""
    try:
        handle = open(journal, "rb")
    except OSError as exc:
        raise InputError(f"{journal}: cannot read: {exc.strerror}") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise OutputError(
                    f"{journal}: line {number} is not JSON: {exc}",
                    hint="prefgen repair rebuilds the journal from the ledger",
                ) from exc
            yield line


def write_json_array(target: Path, lines: Iterable[bytes], temp_suffix: str = ".tmp") -> int:
    """Write `target` as a JSON array of `lines` (JSON texts), one item per line; return the count."""
    count = 0
    with atomic_write(target, temp_suffix) as handle:
        handle.write(b"[")
        for line in lines:
            handle.write(b"\n" if count == 0 else b",\n")
            handle.write(line.rstrip(b"\r\n"))
            count += 1
        handle.write(b"\n]\n" if count else b"]\n")
    return count


def write_json_output(journal: Path, target: Path) -> int:
    """Write the array `target` from its journal; return the number of items."""
    return write_json_array(target, journal_lines(journal))


def adopt_earlier_output(target: Path, journal: Path, ledger_path: Path) -> bool:
    """An earlier prefgen appended JSON Lines to a `.json` output itself; its ledger names the
    `.json`. Make that file the journal (rename, then record it in the ledger; both steps are
    safe to repeat after a crash between them), so the run resumes and ends with an array.
    Returns whether there was such an output."""
    from prefgen.ledger import keys
    from prefgen.ledger.store import Ledger
    from prefgen.runtime.lock import exclusive

    if target == journal or not ledger_path.is_file():
        return False
    with exclusive(target), exclusive(ledger_path):
        ledger = Ledger(ledger_path)
        try:
            if ledger.meta(keys.OUTPUT_PATH) != str(target.resolve()):
                return False
            if target.exists() and not journal.exists():
                target.rename(journal)
                fsync_directory(journal.parent)
            ledger.update_meta({keys.OUTPUT_PATH: str(journal.resolve())})
        finally:
            ledger.close()
    return True
