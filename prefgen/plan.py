"""Step 2 of the flow: turn records into (sample, reject) work units with deterministic seeds."""

from __future__ import annotations

from typing import Iterable, Iterator

from prefgen.config import MAX_REJECTS, check_num_rejects
from prefgen.units import Record, WorkUnit


def unit_seed(seed: int, sample_index: int, reject_index: int) -> int:
    """The seed of one unit; the formula users rely on to reproduce a reject."""
    return seed + sample_index * MAX_REJECTS + reject_index


def plan_units(records: Iterable[Record], num_rejects: int, seed: int) -> Iterator[WorkUnit]:
    """Yield every unit of every record, in (sample_index, reject_index) order."""
    check_num_rejects(num_rejects)
    for record in records:
        for reject_index in range(num_rejects):
            yield WorkUnit(record, reject_index, unit_seed(seed, record.index, reject_index))


def shard(records: Iterable[Record], rank: int, world_size: int) -> Iterator[Record]:
    """The records of one process of `world_size`: sample_index % world_size == rank."""
    return (r for r in records if r.index % world_size == rank)
