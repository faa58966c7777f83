"""Step 3 of the flow: skip what the ledger already has, and check the input has not changed.

Which attempts of a sample are still to make is attempts.py's rule, the same one the run asks
after each commit.
"""

from __future__ import annotations

from itertools import groupby, islice
from typing import Callable, Iterable, Iterator

from prefgen.errors import ChangedInput
from prefgen.flow.attempts import AttemptRule
from prefgen.flow.plan import attempt_units
from prefgen.ledger.store import Ledger
from prefgen.units import CANDIDATE_STATUSES, Record, WorkUnit

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
    rule: AttemptRule,
    seed: int,
    remember: Callable[[int, list[str]], None] = lambda sample, sqls: None,
) -> Iterator[WorkUnit]:
    """The units still to generate under `rule`, in order; `remember(sample, sqls)` hears each
    sample's candidates so far (judge.DedupIndex.remember, for --dedup-rejects)."""
    for window in windows(records):
        known = ledger.units_between(window[0].index, window[-1].index)
        hashes = recorded_hashes(known)
        units: dict[int, dict[int, dict]] = {}
        for sample, rows in groupby(sorted(known.items()), key=lambda item: item[0][0]):
            rows = [row for _, row in rows]
            units[sample] = {row["reject_index"]: row for row in rows}
            remember(sample, [row["sql"] for row in rows if row["status"] in CANDIDATE_STATUSES])
        for record in window:
            todo = rule.need(units.get(record.index, {})).attempts
            if todo:
                check_unchanged(record, hashes)
            yield from attempt_units(record, todo, seed)
