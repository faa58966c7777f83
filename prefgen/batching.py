"""Step 4 of the flow: cut the stream of pending units into bounded batches."""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

from prefgen.plan import WorkUnit


def batches(units: Iterable[WorkUnit], batch_size: int) -> Iterator[list[WorkUnit]]:
    """Consecutive batches of at most `batch_size` units: a hard bound on what is in flight."""
    iterator = iter(units)
    while batch := list(islice(iterator, batch_size)):
        yield batch
