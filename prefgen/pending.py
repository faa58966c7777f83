"""Step 3 of the flow: skip what the ledger already has, and check the input has not changed.

A sample's attempts: the first `num_rejects` are always made; with --max-attempts K above
that, further attempts are made while the sample has fewer than `num_rejects` written rejects
and fewer than K attempts, each wave exactly as many as are still missing. Attempt `a` of a
sample is made if and only if a < num_rejects, or a < K and attempts 0..a-1 wrote fewer than
num_rejects, however the waves were cut (by batches, by a crash): a resumed run makes the same
attempts as an uninterrupted one. With --pairs onpolicy (what counts: the pairs its candidates
can form) waves have a fixed size, num_rejects, and attempt `a` of wave [s, s+num_rejects) is
made if and only if a < K and attempts 0..s-1 formed fewer than num_rejects pairs.
"""

from __future__ import annotations

from itertools import groupby, islice
from typing import Callable, Iterable, Iterator

from prefgen.errors import ChangedInput
from prefgen.judge import dedup_key
from prefgen.ledger.store import Ledger
from prefgen.plan import unit_seed
from prefgen.units import CANDIDATE_STATUSES, RETRIED_STATUSES, RETRY, WRITTEN, Record, WorkUnit

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


def unresolved_attempts(statuses: dict[int, str], num_rejects: int) -> list[int]:
    """Attempts of a sample that must be made (again) before anything else: the first
    `num_rejects` that are missing, gaps, and those in oom / error / retry."""
    recorded = max(statuses, default=-1) + 1
    return [a for a in range(max(num_rejects, recorded)) if statuses.get(a, RETRY) in RETRIED_STATUSES]


def written_count(rows: Iterable[dict]) -> int:
    """What a sample has towards --num-rejects with --pairs gold: its written rejects."""
    return sum(row["status"] == WRITTEN for row in rows)


def further_attempts(statuses: dict[int, str], num_rejects: int, attempts: int, have: int, wave: int = 0) -> list[int]:
    """The next wave of a sample whose attempts so far are all resolved, within `attempts`
    (--max-attempts): as many as it still lacks (`have`: written rejects, or on-policy pairs).

    With a fixed `wave` size (on-policy, where one correct answer can complete several pairs
    at once), waves start at num_rejects + i*wave whatever `have` says: a wave cut by a crash
    is finished first, and only a whole wave decides whether another is needed."""
    recorded = max(statuses, default=-1) + 1
    if recorded >= attempts or unresolved_attempts(statuses, num_rejects):
        return []
    if wave:
        into = (recorded - num_rejects) % wave
        if into:
            return list(range(recorded, min(recorded + wave - into, attempts)))
        return list(range(recorded, min(recorded + wave, attempts))) if have < num_rejects else []
    return list(range(recorded, min(recorded + num_rejects - have, attempts)))


def pending_units(
    records: Iterable[Record],
    ledger: Ledger,
    num_rejects: int,
    seed: int,
    kept: dict[int, set[str]],
    dedup: str = "",
    attempts: int = 0,
    kept_count: Callable[[list[dict]], int] = written_count,
    wave: int = 0,
) -> Iterator[WorkUnit]:
    """The units still to generate, in order; fills `kept` with each sample's candidate SQL
    (as dedup keys). `attempts` is --max-attempts (0: num_rejects); `kept_count` says what a
    sample's units give towards num_rejects, `wave` the fixed wave size (0: what it lacks)."""
    attempts = attempts or num_rejects
    for window in windows(records):
        known = ledger.units_between(window[0].index, window[-1].index)
        hashes = recorded_hashes(known)
        statuses: dict[int, dict[int, str]] = {}
        have: dict[int, int] = {}
        for sample, rows in groupby(sorted(known.items()), key=lambda item: item[0][0]):
            rows = [row for _, row in rows]
            statuses[sample] = {row["reject_index"]: row["status"] for row in rows}
            have[sample] = kept_count(rows)
            candidates = {dedup_key(row["sql"], dedup) for row in rows if row["status"] in CANDIDATE_STATUSES}
            if candidates:
                kept[sample] = candidates
        for record in window:
            done = statuses.get(record.index, {})
            todo = unresolved_attempts(done, num_rejects) or further_attempts(
                done, num_rejects, attempts, have.get(record.index, 0), wave
            )
            if todo:
                check_unchanged(record, hashes)
            for attempt in todo:
                yield WorkUnit(record, attempt, unit_seed(seed, record.index, attempt))
