"""The engine boundary: the few calls the run loop makes of an engine, whichever it is.

An engine takes batches of work units and gives one `Answer` per unit. Each unit is sampled
with its own seed, so its text never depends on the batch it is in. The run loop is typed
against `Engine` and never asks which engine it drives; each engine is one module of this
package (`transformers.py`, `vllm.py`) that implements it. `BatchEngine` gives `start` and
`answers` to an engine that generates a whole batch in one call (the transformers engine, and
the tests' scripted stand-in).

Both engines refuse a prompt that does not fit their context by one rule, `prompt_fits`: such a
unit is answered `too_long` before any compute (the judge records it; it is never retried).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Protocol, runtime_checkable

from prefgen.errors import OutOfMemory
from prefgen.units import Answer, WorkUnit

Backoff = tuple[int, int]  # (rows that ran out of memory, rows retried at once)


@runtime_checkable
class Engine(Protocol):
    """What the run loop asks of an engine, and nothing else."""

    device: str  # recorded in the ledger
    adapter_merged: bool  # recorded in the ledger
    settings: dict  # recorded in the ledger too: what the engine chose (vLLM: its batch sizes, LoRA mode)

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


def prompt_fits(prompt_tokens: int, context: int) -> bool:
    """Whether a prompt leaves room for at least one new token in the context (the model's
    positions, or --max-model-len; 0: no limit known)."""
    return not context or prompt_tokens < context


def too_long(prompt_tokens: int) -> Answer:
    """The answer for a unit whose prompt does not fit the context: nothing was generated."""
    return Answer("", prompt_tokens, 0, 0.0, too_long=True)


def generate_with_backoff(engine, units: list, rows: list, on_backoff: Callable[[int, int], None]) -> list[tuple]:
    """(new tokens or None, seconds) per unit; on out-of-memory, halve the batch and retry,
    down to single rows (None: the unit does not fit alone)."""
    try:
        tokens, seconds = engine.generate_tokens(units, rows)
        return [(new, seconds) for new in tokens]
    except OutOfMemory:
        engine.free_memory()
        if len(units) == 1:
            return [(None, 0.0)]
        half = (len(units) + 1) // 2
        on_backoff(len(units), half)
        first = generate_with_backoff(engine, units[:half], rows[:half], on_backoff)
        return first + generate_with_backoff(engine, units[half:], rows[half:], on_backoff)


class BatchEngine:
    """`start` / `answers` for an engine that generates a whole batch in one call: its
    `generate_tokens(units, prompt rows)` runs in a daemon thread (torch releases the GIL while
    it computes; a second signal never waits for it), with OOM backoff; prompts are tokenized
    before, and answers decoded after, in the calling thread (a fast tokenizer must not be used
    from two threads at once). Subclasses give `prompt_ids` (None for a prompt that does not fit
    the context: its unit is answered `too_long` and never reaches `generate_tokens`),
    `prompt_length`, `generate_tokens`, `answer`, and `find_batch_size` where they can measure
    their memory."""

    overlap_default = False
    settings: dict = {}  # nothing chosen beyond the run's own settings (read only)

    def start(self, units: list[WorkUnit]) -> Future:
        """Begin generating one batch in a background thread (its units that fit the context)."""
        future: Future = Future()
        rows = [self.prompt_ids(unit) for unit in units]
        fit = [i for i, row in enumerate(rows) if row is not None]

        def work() -> None:
            backoffs: list[Backoff] = []
            results: list = [None] * len(units)  # None: too long, nothing generated
            try:
                if fit:
                    sent = [units[i] for i in fit], [rows[i] for i in fit]
                    done = generate_with_backoff(self, *sent, lambda count, half: backoffs.append((count, half)))
                    for i, result in zip(fit, done, strict=True):
                        results[i] = result
            except BaseException as exc:  # handed to the run loop's thread, which raises it
                future.set_exception(exc)
            else:
                future.set_result((rows, results, backoffs))

        threading.Thread(target=work, name="prefgen-generate", daemon=True).start()
        return future

    def answers(self, units: list[WorkUnit], future: Future) -> tuple[list[Answer], list[Backoff]]:
        """Wait for a started batch and decode its answers, in the calling thread."""
        rows, results, backoffs = future.result()
        answers = [
            too_long(self.prompt_length(unit)) if result is None else self.answer(row, *result)
            for unit, row, result in zip(units, rows, results, strict=True)
        ]
        return answers, backoffs

    def find_batch_size(self, prompt_length: int) -> int:
        """`--batch-size auto` for an engine that cannot measure its memory: one row at a time,
        which always fits."""
        return 1

    def free_memory(self) -> None:
        """Release cached device memory after an out-of-memory error."""

    def close(self) -> None:
        """Release the engine (nothing to do for an in-process model)."""
