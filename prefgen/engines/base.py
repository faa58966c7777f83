"""The engine boundary: the few calls the run loop makes of an engine, whichever it is.

An engine takes batches of work units and gives one `Answer` per unit. Each unit is sampled
with its own seed, so its text never depends on the batch it is in. The run loop is typed
against `Engine` and never asks which engine it drives; each engine is one module of this
package (`transformers.py`, `vllm.py`) that implements it.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from prefgen.units import Answer, WorkUnit

Backoff = tuple[int, int]  # (rows that ran out of memory, rows retried at once)


@runtime_checkable
class Engine(Protocol):
    """What the run loop asks of an engine, and nothing else."""

    device: str  # recorded in the ledger
    adapter_merged: bool  # recorded in the ledger

    @property
    def overlap_default(self) -> bool:
        """Whether a batch should generate while the previous one is judged and committed."""

    def prompt_length(self, unit: WorkUnit) -> int:
        """Tokens in the unit's prompt (for batching and --max-batch-tokens)."""

    def find_batch_size(self, prompt_length: int) -> int:
        """Rows per batch for `--batch-size auto`, for prompts of this length."""

    def start(self, units: list[WorkUnit]) -> Future:
        """Begin generating one batch in the background."""

    def answers(self, units: list[WorkUnit], future: Future) -> tuple[list[Answer], list[Backoff]]:
        """Wait for a started batch: one Answer per unit, in unit order, and the out-of-memory
        backoffs made on the way. Called in the run loop's thread."""

    def close(self) -> None:
        """Release the engine, its memory and every process it started."""
