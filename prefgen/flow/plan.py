"""Step 2 of the flow: turn records into (sample, reject) work units with deterministic seeds."""

from __future__ import annotations

from typing import Iterable, Iterator

from prefgen.config import MAX_REJECTS, check_num_rejects
from prefgen.units import Record, WorkUnit


def unit_seed(seed: int, sample_index: int, reject_index: int) -> int:
    """The seed of one unit; the formula users rely on to reproduce a reject."""
    return seed + sample_index * MAX_REJECTS + reject_index


def attempt_units(record: Record, attempts: Iterable[int], seed: int) -> list[WorkUnit]:
    """The units of these attempts of one record, each with its seed."""
    return [WorkUnit(record, attempt, unit_seed(seed, record.index, attempt)) for attempt in attempts]


def plan_units(records: Iterable[Record], num_rejects: int, seed: int) -> Iterator[WorkUnit]:
    """Yield every unit of every record, in (sample_index, reject_index) order."""
    check_num_rejects(num_rejects)
    for record in records:
        yield from attempt_units(record, range(num_rejects), seed)


def shard(records: Iterable[Record], rank: int, world_size: int) -> Iterator[Record]:
    """The records of one process of `world_size`: sample_index % world_size == rank."""
    return (r for r in records if r.index % world_size == rank)
