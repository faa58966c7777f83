"""`prefgen repair`: rebuild the output from the ledger, which holds every kept reject's line
(for a `.json` output: its JSON Lines journal, then the JSON array from it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefgen.errors import LedgerError, OutputError
from prefgen.files.atomic import atomic_write
from prefgen.files.json_output import write_json_output
from prefgen.ledger import keys
from prefgen.ledger.store import Ledger
from prefgen.paths import journal_of, ledger_beside, run_output
from prefgen.runtime.lock import exclusive


def repair_output(output: str, ledger_path: str = "") -> int:
    """Rewrite `output` from the ledger (atomically, by rename); return the number of lines."""
    path = run_output(output) if not ledger_path else Path(output)
    ledger_file = Path(ledger_path) if ledger_path else ledger_beside(path)
    if not ledger_file.exists():
        raise LedgerError(f"{ledger_file}: no such ledger", hint="pass --ledger if it is not next to the output")
    journal = journal_of(path)
    with exclusive(journal), exclusive(ledger_file):
        ledger = Ledger(ledger_file)
        try:
            count = _rebuild(ledger, journal)
        finally:
            ledger.close()
        if journal != path:
            write_json_output(journal, path)
    return count


def _rebuild(ledger: Ledger, path: Path) -> int:
    base = int(ledger.meta(keys.OUTPUT_BASE, "0"))
    committed = int(ledger.meta(keys.OUTPUT_COMMITTED, "0"))
    prefix = _foreign_prefix(path, base)
    digest = hashlib.sha256()  # of the bytes after the prefix, which the ledger's hash covers
    count, offset = 0, base
    with atomic_write(path, ".repair") as handle:
        handle.write(prefix)
        for row in ledger.written_lines():
            line = row["line"].encode()
            if row["line_offset"] != offset:
                raise LedgerError(
                    f"ledger line of unit ({row['sample_index']}, {row['reject_index']}) is at offset "
                    f"{row['line_offset']}, expected {offset}: the ledger is inconsistent"
                )
            handle.write(line)
            digest.update(line)
            offset += len(line)
            count += 1
        if offset != committed or digest.hexdigest() != ledger.meta(keys.OUTPUT_SHA256):
            raise LedgerError("the lines in the ledger do not add up to the committed output; nothing was changed")
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
