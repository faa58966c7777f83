"""Step 4 of the flow: cut the stream of pending units into bounded batches.

A batch is bounded in rows (`batch_size`) and, optionally, in tokens (`max_batch_tokens`:
rows times the longest row's prompt plus max-new-tokens), so one long schema cannot blow up a
batch sized for short ones. Within a look-ahead window of `lookahead` consecutive samples,
units are ordered by prompt length so that a batch's rows need little padding. Windows are
aligned to sample indexes (samples 0..L-1, L..2L-1, ...), so a resumed run orders the units it
still has to do exactly as an uninterrupted run would have.
"""

from __future__ import annotations

from itertools import groupby
from typing import Callable, Iterable, Iterator

from prefgen.units import WorkUnit


def window_start(sample_index: int, lookahead: int) -> int:
    """The first sample of the look-ahead window a sample belongs to."""
    return sample_index - sample_index % max(lookahead, 1)


def batches(
    units: Iterable[WorkUnit],
    batch_size: int | Callable[[], int],
    max_batch_tokens: int = 0,
    lookahead: int = 1,
    prompt_length: Callable[[WorkUnit], int] | None = None,
    max_new_tokens: int = 0,
) -> Iterator[list[WorkUnit]]:
    """Batches of at most `batch_size` units (and `max_batch_tokens` tokens, when > 0).

    `batch_size` may be a callable, read at the start of every batch (an adaptive limit).
    """
    needs_lengths = lookahead > 1 or max_batch_tokens > 0
    if needs_lengths and prompt_length is None:
        raise ValueError("grouping or a token bound needs prompt_length")
    if lookahead <= 1:
        yield from _cut(units, batch_size, max_batch_tokens, prompt_length, max_new_tokens)
        return
    for _, window in groupby(units, key=lambda u: window_start(u.sample_index, lookahead)):
        ordered = sorted(window, key=lambda u: (prompt_length(u), u.sample_index, u.reject_index))
        yield from _cut(ordered, batch_size, max_batch_tokens, prompt_length, max_new_tokens)


def _cut(window, batch_size, max_batch_tokens, prompt_length, max_new_tokens) -> Iterator[list[WorkUnit]]:
    batch: list[WorkUnit] = []
    width = 0  # the longest row of the batch: every row is padded to it
    limit = batch_size() if callable(batch_size) else batch_size
    for unit in window:
        row = prompt_length(unit) + max_new_tokens if max_batch_tokens else 0
        wider = max(width, row)
        full = len(batch) >= limit or (max_batch_tokens and wider * (len(batch) + 1) > max_batch_tokens)
        if batch and full:
            yield batch
            batch, wider = [], row
            limit = batch_size() if callable(batch_size) else batch_size
        batch.append(unit)
        width = wider
    if batch:
        yield batch
