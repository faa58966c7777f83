"""The transformers engine (`--engine transformers`, the default): load the model (and LoRA
adapter, through engines/loading.py) and generate a batch of units with prefgen's own decode
loop, each row sampled with its own seed (engines/sampling.py).

It imports torch and transformers inside the functions that need them, so importing prefgen
(and every other CLI command) stays instant.
"""

from __future__ import annotations

import logging
import os
import time

from prefgen.config import GenerateConfig
from prefgen.engines.base import BatchEngine, prompt_fits
from prefgen.engines.loading import (
    TokenizerSide,
    attach_adapter,
    check_model_ref,
    eos_token_ids,
    hub_hint,
    load_model,
    load_tokenizer,
    model_context,
    quiet_transformers,
)
from prefgen.errors import ModelError, OutOfMemory
from prefgen.runtime.faults import fault_point
from prefgen.units import WorkUnit

log = logging.getLogger("prefgen")

AUTO_BATCH_LIMIT_CPU = 64  # the best rows on CPU in docs/benchmarks.md; memory is no limit there
AUTO_BATCH_LIMIT_CUDA = 1024


def pick_device(requested: str) -> str:
    """The device to run on: `auto` is CUDA where torch sees it, else the CPU; CUDA asked for
    that is not there falls back to the CPU with a warning."""
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("--device %s asked for, but CUDA is not available: running on CPU", requested)
        return "cpu"
    if requested == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    return requested


def cache_keyword(model) -> str:
    """The keyword the model's forward takes its KV cache by: `cache` where transformers has
    renamed `past_key_values` (deprecated there, and due to go), `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def reserved_layer(extra: int):
    """A KV-cache layer that reserves room for `extra` more tokens.

    transformers' DynamicLayer concatenates on every decode step, copying the whole cache each
    time; this one writes each step's keys and values in place into a buffer sized once.
    """
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length, added = self.get_seq_length(), key_states.shape[-2]
            buffer = getattr(self, "_keys_buffer", None)
            if buffer is None or length + added > buffer.shape[-2]:
                self._allocate(key_states, length, length + added + extra)
            self._keys_buffer[:, :, length : length + added] = key_states
            self._values_buffer[:, :, length : length + added] = value_states
            self.keys = self._keys_buffer[:, :, : length + added]
            self.values = self._values_buffer[:, :, : length + added]
            return self.keys, self.values

        def _allocate(self, like, length: int, capacity: int) -> None:
            shape = (like.shape[0], like.shape[1], capacity, like.shape[3])
            keys, values = like.new_empty(shape), like.new_empty(shape)
            if length:
                keys[:, :, :length] = self.keys
                values[:, :, :length] = self.values
            self._keys_buffer, self._values_buffer = keys, values

        def batch_select_indices(self, indices) -> None:
            length = self.get_seq_length()
            if length > 0:
                self._keys_buffer = self._keys_buffer[indices]
                self._values_buffer = self._values_buffer[indices]
                self.keys = self._keys_buffer[:, :, :length]
                self.values = self._values_buffer[:, :, :length]

    return ReservedLayer()


class HFEngine(BatchEngine, TokenizerSide):
    """A loaded model that turns work units into answers, each sampled with its own seed."""

    def __init__(self, model, tokenizer, device: str, cfg: GenerateConfig, adapter_merged: bool):
        self.model = model.eval()
        eos_ids = eos_token_ids(model.generation_config, tokenizer)
        self.init_tokenizer(tokenizer, cfg.system, eos_ids, model_context(model.config, cfg.max_model_len))
        self.device = device
        self.cfg = cfg
        self.adapter_merged = adapter_merged
        self.pad_id = tokenizer.pad_token_id
        self.drop_finished = True  # False keeps finished rows computing: for the benchmark's comparison
        self.cache_keyword = cache_keyword(model)

    @property
    def overlap_default(self) -> bool:
        # Measured on CPU, overlapping only makes generation and commits share the cores
        # (docs/benchmarks.md); on a GPU the generating thread waits on the device.
        return self.device.startswith("cuda")

    def _pad(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def generate_tokens(self, units: list[WorkUnit], rows: list[list[int]]) -> tuple[list[list[int]], float]:
        """The new tokens of each unit, given its prompt's token ids, and the seconds per unit.

        Pure torch work, no tokenizer: safe to run in a thread while the main thread tokenizes
        (a fast tokenizer must not be used from two threads at once).
        """
        import torch

        started = time.perf_counter()
        try:
            fault_point("generate", rows=len(units))
            with torch.inference_mode():
                tokens = self._decode(units, rows)
        except torch.cuda.OutOfMemoryError as exc:
            raise OutOfMemory(f"CUDA out of memory with {len(units)} rows: {exc}") from exc
        return tokens, (time.perf_counter() - started) / len(units)

    def _decode(self, units: list[WorkUnit], rows: list[list[int]]) -> list[list[int]]:
        """Prefill each distinct prompt once, then decode every row with its own seed.

        Rows that have produced an end-of-sequence token leave the batch (and the KV cache),
        so the rows still generating do not pay for them.
        """
        import torch
        from transformers import DynamicCache

        from prefgen.engines.sampling import choose_tokens

        samples = list(dict.fromkeys(u.sample_index for u in units))
        prompt_of = {u.sample_index: row for u, row in zip(units, rows, strict=True)}
        ids, mask = self._pad([prompt_of[s] for s in samples])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        cache.layers = [reserved_layer(self.cfg.max_new_tokens) for _ in cache.layers]
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_keyword: cache},
        )
        # Expand the prefilled prompts to one row per unit.
        row_of = torch.tensor([samples.index(u.sample_index) for u in units], device=ids.device)
        cache.batch_select_indices(row_of)
        logits, mask, position = out.logits[row_of, -1, :], mask[row_of], positions[row_of, -1]
        seeds = torch.tensor([u.seed for u in units], dtype=torch.int64, device=ids.device)
        active = torch.arange(len(units), device=ids.device)  # original row of each live row
        eos = torch.tensor(self.eos_ids, device=ids.device)
        generated: list[list[int]] = [[] for _ in units]
        # as vLLM does: a row's new tokens stop where its prompt and they fill the context
        rooms = [min(self.cfg.max_new_tokens, self.context - len(row)) if self.context else 10**9 for row in rows]
        room = torch.tensor(rooms, device=ids.device)
        finished = torch.zeros(len(units), dtype=torch.bool, device=ids.device)
        for step in range(self.cfg.max_new_tokens):
            chosen = choose_tokens(logits, seeds, step, self.cfg.temperature, self.cfg.top_p)
            for row, token in zip(active.tolist(), chosen.tolist(), strict=False):
                generated[row].append(token)
            finished = finished | torch.isin(chosen, eos) | (room <= step + 1)
            if step == self.cfg.max_new_tokens - 1 or bool(finished.all()):
                break
            live = ~finished if self.drop_finished else torch.ones_like(finished)
            if not bool(live.all()):
                keep = live.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, chosen, seeds, mask, position, room = (
                    active[keep],
                    chosen[keep],
                    seeds[keep],
                    mask[keep],
                    position[keep],
                    room[keep],
                )
                finished = finished[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            position = position + 1
            out = self.model(
                input_ids=chosen[:, None],
                attention_mask=mask,
                position_ids=position[:, None],
                use_cache=True,
                **{self.cache_keyword: cache},
            )
            logits = out.logits[:, -1, :]
        return [tokens[:limit] for tokens, limit in zip(generated, rooms, strict=True)]

    def find_batch_size(self, prompt_length: int) -> int:
        """The largest power-of-two row count (up to the device's limit) whose rows fit in memory
        with a full KV cache of `prompt_length` + max-new-tokens and a decode step. A prompt
        that does not fit the context is never generated (it is answered too_long): then the
        longest prompt seen that fits is what batches are sized for, and no row is longer than
        the context."""
        limit = AUTO_BATCH_LIMIT_CUDA if self.device.startswith("cuda") else AUTO_BATCH_LIMIT_CPU
        if not prompt_fits(prompt_length, self.context):
            prompt_length = max(self.longest_fitting, 1)
        length = prompt_length + self.cfg.max_new_tokens
        length = min(length, self.context) if self.context else length
        rows, fits = 1, 1
        while rows <= limit:
            try:
                self._probe(rows, length)
                fits = rows
            except OutOfMemory:
                break
            finally:
                self.free_memory()
            rows *= 2
        return fits

    def _probe(self, rows: int, length: int) -> None:
        import torch
        from transformers import DynamicCache

        fault_point("generate", rows=rows)
        ids = torch.full((rows, length), self.pad_id, dtype=torch.long, device=self.model.device)
        try:
            with torch.inference_mode():
                cache = DynamicCache(config=self.model.config)
                kwargs = {self.cache_keyword: cache, "use_cache": True}
                self.model(input_ids=ids[:, :-1], logits_to_keep=1, **kwargs)
                self.model(input_ids=ids[:, -1:], **kwargs)
        except torch.cuda.OutOfMemoryError as exc:
            raise OutOfMemory(f"CUDA out of memory probing {rows} rows") from exc

    def free_memory(self) -> None:
        """Release cached device memory after an out-of-memory error."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load(cfg: GenerateConfig) -> HFEngine:
    """Load tokenizer, model and adapter as the config asks; raise ModelError when impossible."""
    quiet_transformers()
    check_model_ref(cfg.base_model)
    device = pick_device(cfg.device)
    try:
        tokenizer = load_tokenizer(cfg.base_model)
        fault_point("mid_model_load")
        model = load_model(cfg.base_model, device)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model {cfg.base_model}: {exc}", hint=hub_hint(cfg.base_model)) from exc
    model, merged = attach_adapter(model, cfg.adapter_path)
    return HFEngine(model, tokenizer, device, cfg, merged)
