"""Step 2 of the flow: turn records into (sample, reject) work units with deterministic seeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from prefgen.errors import ConfigError
from prefgen.records import Record

MAX_REJECTS = 1000  # seeds are seed + sample*1000 + reject: more rejects would collide


@dataclass(frozen=True)
class WorkUnit:
    """One reject to generate for one record."""

    record: Record
    reject_index: int
    seed: int

    @property
    def sample_index(self) -> int:
        return self.record.index

    @property
    def key(self) -> tuple[int, int]:
        return (self.record.index, self.reject_index)


def unit_seed(seed: int, sample_index: int, reject_index: int) -> int:
    """The seed of one unit; the formula users rely on to reproduce a reject."""
    return seed + sample_index * MAX_REJECTS + reject_index


def check_num_rejects(num_rejects: int) -> None:
    """Refuse reject counts whose seeds would collide with the next sample's."""
    if not 1 <= num_rejects < MAX_REJECTS:
        raise ConfigError(
            f"--num-rejects must be between 1 and {MAX_REJECTS - 1}, not {num_rejects}",
            hint=f"seeds are seed + sample_index*{MAX_REJECTS} + reject_index, so more would collide",
        )


def plan_units(records: Iterable[Record], num_rejects: int, seed: int) -> Iterator[WorkUnit]:
    """Yield every unit of every record, in (sample_index, reject_index) order."""
    check_num_rejects(num_rejects)
    for record in records:
        for reject_index in range(num_rejects):
            yield WorkUnit(record, reject_index, unit_seed(seed, record.index, reject_index))


def shard(records: Iterable[Record], rank: int, world_size: int) -> Iterator[Record]:
    """The records of one process of `world_size`: sample_index % world_size == rank."""
    return (r for r in records if r.index % world_size == rank)
