"""Step 3 of the flow: skip what the ledger already has, and check the input has not changed."""

from __future__ import annotations

from itertools import groupby, islice
from typing import Iterable, Iterator

from prefgen.errors import ChangedInput
from prefgen.judge import RETRIED_STATUSES, WRITTEN, dedup_key
from prefgen.ledger import Ledger
from prefgen.plan import WorkUnit, plan_units
from prefgen.records import Record

WINDOW = 1024  # records looked up in the ledger per query: bounds memory on any input size


def windows(records: Iterable[Record]) -> Iterator[list[Record]]:
    iterator = iter(records)
    while window := list(islice(iterator, WINDOW)):
        yield window


def recorded_hashes(known: dict[tuple[int, int], dict]) -> dict[int, set[str]]:
    """sample -> the record hashes its units were generated from."""
    hashes: dict[int, set[str]] = {}
    for (sample, _), row in known.items():
        hashes.setdefault(sample, set()).add(row["record_hash"])
    return hashes


def check_unchanged(record: Record, hashes: dict[int, set[str]]) -> None:
    """Refuse a record whose content differs from what the ledger recorded for it."""
    if hashes.get(record.index, {record.hash}) != {record.hash}:
        raise ChangedInput(
            f"record {record.index} of the data file has changed since the ledger recorded it",
            hint="restore the original data file; records may only be appended at its end",
        )


def scan_records(records: Iterable[Record], ledger: Ledger) -> int:
    """Validate and count the records, checking each one the ledger knows; return the count."""
    count = 0
    for window in windows(records):
        hashes = recorded_hashes(ledger.units_between(window[0].index, window[-1].index))
        for record in window:
            check_unchanged(record, hashes)
        count += len(window)
    return count


def pending_units(
    records: Iterable[Record],
    ledger: Ledger,
    num_rejects: int,
    seed: int,
    kept: dict[int, set[str]],
    dedup: str = "",
) -> Iterator[WorkUnit]:
    """The units still to generate, in order; fills `kept` with each sample's written SQL
    (as dedup keys)."""
    for window in windows(records):
        known = ledger.units_between(window[0].index, window[-1].index)
        hashes = recorded_hashes(known)
        for sample, rows in groupby(sorted(known.items()), key=lambda item: item[0][0]):
            written = {dedup_key(row["sql"], dedup) for _, row in rows if row["status"] == WRITTEN}
            if written:
                kept[sample] = written
        for unit in plan_units(window, num_rejects, seed):
            row = known.get(unit.key)
            if row is None or row["status"] in RETRIED_STATUSES:
                check_unchanged(unit.record, hashes)
                yield unit
