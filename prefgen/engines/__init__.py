"""Step 5 of the flow: generate answers for batches of work units, with one of two engines.

The run loop asks an engine for exactly this, and nothing else:

- `prompt_length(unit)`: tokens in the unit's prompt (for batching);
- `find_batch_size(prompt_length)`: rows for `--batch-size auto`;
- `start(units)`: begin generating one batch in the background, returning a Future;
- `answers(units, future)`: wait for it and give (one `Answer` per unit, in unit order, and
  the out-of-memory backoffs it made); called in the run loop's thread;
- `overlap_default`: whether a batch should generate while the previous one is committed;
- `device`, `adapter_merged` (recorded in the ledger), and `close()`.

Each unit is sampled with its own seed, so its text never depends on the batch it is in.
`transformers` (engines/hf.py) is the default; `vllm` (engines/vllm.py) is an optional extra.
Both import their heavy libraries lazily, so `prefgen --help` stays instant.
"""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import Future
from pathlib import Path

from prefgen.config import GenerateConfig, looks_local
from prefgen.errors import ModelError, OutOfMemory
from prefgen.units import Answer

ENGINES = {"transformers": "prefgen.engines.transformers", "vllm": "prefgen.engines.vllm"}
PROMPT_CACHE_SIZE = 4096  # tokenized prompts kept; batches and look-ahead windows are far smaller


def check_model_ref(ref: str) -> None:
    """Refuse a local model directory that is not there, before any engine starts."""
    if looks_local(ref) and not Path(ref).expanduser().is_dir():
        raise ModelError(
            f"{ref}: no such model directory",
            hint="give --base-model a local model directory or a hub id (try `prefgen tiny-model DIR`)",
        )


def eos_token_ids(generation_config, tokenizer) -> list[int]:
    """The tokens that end an answer: the model's generation config's and the tokenizer's."""
    ids = getattr(generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class TokenizerSide:
    """What both engines do with the Hugging Face tokenizer, in the run loop's thread: prompt
    token ids (the chat template as LLaMA-Factory trained on it, cached per sample: its rejects
    share them) and answers decoded from new tokens."""

    def init_tokenizer(self, tokenizer, system: str, eos_ids: list[int]) -> None:
        from prefgen.prompts import PromptBuilder

        self.tokenizer = tokenizer
        self.prompt = PromptBuilder(tokenizer, system)
        self.eos_ids = eos_ids
        self._prompt_cache: dict[tuple[int, str], list[int]] = {}

    def prompt_ids(self, unit) -> list[int]:
        """The token ids of a unit's prompt."""
        key = (unit.sample_index, unit.record.hash)
        ids = self._prompt_cache.get(key)
        if ids is None:
            if len(self._prompt_cache) >= PROMPT_CACHE_SIZE:
                self._prompt_cache.clear()
            ids = self.tokenizer(self.prompt(unit.record), add_special_tokens=False)["input_ids"]
            self._prompt_cache[key] = ids
        return ids

    def prompt_length(self, unit) -> int:
        return len(self.prompt_ids(unit))

    def answer(self, prompt: list[int], new: list[int] | None, seconds: float) -> Answer:
        """Decode one unit's new tokens (None: the unit did not fit in memory alone)."""
        if new is None:
            return Answer("", len(prompt), 0, 0.0, oom=True)
        cut = next((i for i, t in enumerate(new) if t in self.eos_ids), None)
        kept = new if cut is None else new[:cut]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Answer(text, len(prompt), len(kept) + (cut is not None), seconds)


def load_engine(cfg: GenerateConfig):
    """The engine `cfg.engine` names, loaded (model, tokenizer, adapter)."""
    return importlib.import_module(ENGINES[cfg.engine]).load(cfg)


def generate_with_backoff(engine, units: list, rows: list, on_backoff) -> list[tuple]:
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
    from two threads at once). Subclasses give `prompt_ids`, `generate_tokens`, `answer`."""

    overlap_default = False

    def start(self, units: list) -> Future:
        future: Future = Future()
        rows = [self.prompt_ids(unit) for unit in units]

        def work() -> None:
            backoffs: list[tuple[int, int]] = []
            try:
                results = generate_with_backoff(self, units, rows, lambda count, half: backoffs.append((count, half)))
            except BaseException as exc:  # handed to the run loop's thread, which raises it
                future.set_exception(exc)
            else:
                future.set_result((rows, results, backoffs))

        threading.Thread(target=work, name="prefgen-generate", daemon=True).start()
        return future

    def answers(self, units: list, future: Future) -> tuple[list[Answer], list[tuple[int, int]]]:
        rows, results, backoffs = future.result()
        answers = [self.answer(row, new, seconds) for row, (new, seconds) in zip(rows, results, strict=True)]
        return answers, backoffs

    def free_memory(self) -> None:
        """Release cached device memory after an out-of-memory error."""

    def close(self) -> None:
        """Release the engine (nothing to do for an in-process model)."""
