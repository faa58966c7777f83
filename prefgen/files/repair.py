"""`prefgen repair`: rebuild the JSONL from the ledger, which holds every kept reject's line."""

from __future__ import annotations

import os
from pathlib import Path

from prefgen.commit import hash_range
from prefgen.errors import LedgerError, OutputError
from prefgen.ledger.store import Ledger
from prefgen.paths import LEDGER_SUFFIX
from prefgen.runtime.lock import exclusive


def repair_output(output: str, ledger_path: str = "") -> int:
    """Rewrite `output` from the ledger (atomically, by rename); return the number of lines."""
    path = Path(output)
    ledger_file = Path(ledger_path) if ledger_path else Path(output + LEDGER_SUFFIX)
    if not ledger_file.exists():
        raise LedgerError(f"{ledger_file}: no such ledger", hint="pass --ledger if it is not next to the output")
    with exclusive(path), exclusive(ledger_file):
        ledger = Ledger(ledger_file)
        try:
            return _rebuild(ledger, path)
        finally:
            ledger.close()


def _rebuild(ledger: Ledger, path: Path) -> int:
    base = int(ledger.meta("output_base", "0"))
    committed = int(ledger.meta("output_committed", "0"))
    prefix = _foreign_prefix(path, base)
    temp = path.with_name(path.name + ".repair")
    count, offset = 0, base
    with open(temp, "wb") as handle:
        handle.write(prefix)
        for row in ledger.written_lines():
            line = row["line"].encode()
            if row["line_offset"] != offset:
                raise LedgerError(
                    f"ledger line of unit ({row['sample_index']}, {row['reject_index']}) is at offset "
                    f"{row['line_offset']}, expected {offset}: the ledger is inconsistent"
                )
            handle.write(line)
            offset += len(line)
            count += 1
        handle.flush()
        os.fsync(handle.fileno())
    if offset != committed or hash_range(temp, base, offset).hexdigest() != ledger.meta("output_sha256"):
        temp.unlink()
        raise LedgerError("the lines in the ledger do not add up to the committed output; nothing was changed")
    os.replace(temp, path)
    return count


def _foreign_prefix(path: Path, base: int) -> bytes:
    """The bytes the file held before this ledger started appending to it."""
    if base == 0:
        return b""
    if not path.exists() or path.stat().st_size < base:
        raise OutputError(
            f"{path} held {base} bytes from before this ledger, and they are gone: prefgen cannot rebuild them",
            hint="restore the file's beginning from a backup, or start a new output",
        )
    with open(path, "rb") as handle:
        return handle.read(base)
