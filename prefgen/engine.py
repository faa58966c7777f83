"""Step 5 of the flow: load the model (and LoRA adapter) and generate a batch of units.

The only module that uses torch, transformers and peft, and it imports them inside the
functions that need them, so importing prefgen (and every other CLI command) stays instant.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from prefgen.config import GenerateConfig, looks_local
from prefgen.errors import ModelError, OutOfMemory
from prefgen.faults import fault_point
from prefgen.plan import WorkUnit
from prefgen.prompts import PromptBuilder

log = logging.getLogger("prefgen")


@dataclass(frozen=True)
class Answer:
    """What the model produced for one unit."""

    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    oom: bool = False  # the unit did not fit in memory even alone


def pick_device(requested: str) -> str:
    """The device to run on; CUDA that is not there falls back to CPU with a warning."""
    import torch

    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("--device %s asked for, but CUDA is not available: running on CPU", requested)
        return "cpu"
    return requested


def quiet_transformers() -> None:
    """Keep transformers' own progress bars and advice out of prefgen's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(ref: str):
    """The tokenizer, left-padded for batched generation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref, padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(ref: str, device: str):
    """The base model: bf16 with device_map on CUDA, float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    if device.startswith("cuda"):
        device_map = "auto" if device == "cuda" else {"": device}
        return AutoModelForCausalLM.from_pretrained(ref, dtype=torch.bfloat16, device_map=device_map)
    return AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32).to(device)


def attach_adapter(model, adapter_path: str):
    """Apply and merge a PEFT LoRA adapter; a path that does not exist warns and is skipped."""
    if not adapter_path:
        return model, False
    if not Path(adapter_path).expanduser().exists():
        log.warning("adapter %s does not exist: continuing with the base model alone", adapter_path)
        return model, False
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter_path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the adapter {adapter_path}: {exc}") from exc
    # Merged weights make each decode step as cheap as the base model's.
    return peft_model.merge_and_unload(), True


class Engine:
    """A loaded model that turns work units into answers, each sampled with its own seed."""

    def __init__(self, model, tokenizer, device: str, cfg: GenerateConfig, adapter_merged: bool):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.cfg = cfg
        self.adapter_merged = adapter_merged
        self.prompt = PromptBuilder(tokenizer, cfg.system)
        self.eos_ids = self._eos_ids()
        self.pad_id = tokenizer.pad_token_id

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def prompt_ids(self, unit: WorkUnit) -> list[int]:
        """The token ids of a unit's prompt."""
        return self.tokenizer(self.prompt(unit.record), add_special_tokens=False)["input_ids"]

    def _pad(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def generate(self, units: list[WorkUnit]) -> list[Answer]:
        """Generate one answer per unit; raises OutOfMemory when the batch does not fit."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from prefgen.sampling import SeededSampler

        by_sample: dict[int, list[int]] = {}  # a sample's rejects share one tokenized prompt
        for unit in units:
            if unit.sample_index not in by_sample:
                by_sample[unit.sample_index] = self.prompt_ids(unit)
        rows = [by_sample[u.sample_index] for u in units]
        ids, mask = self._pad(rows)
        sampler = SeededSampler([u.seed for u in units], ids.shape[1], self.cfg.temperature, self.cfg.top_p)
        config = GenerationConfig(
            max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
        )
        started = time.perf_counter()
        try:
            fault_point("generate", rows=len(units))
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, generation_config=config,
                    logits_processor=LogitsProcessorList([sampler]),
                )
        except torch.cuda.OutOfMemoryError as exc:
            raise OutOfMemory(f"CUDA out of memory with {len(units)} rows: {exc}") from exc
        seconds = (time.perf_counter() - started) / len(units)
        return [self._answer(row, out[i, ids.shape[1]:].tolist(), seconds) for i, row in enumerate(rows)]

    def _answer(self, prompt: list[int], new: list[int], seconds: float) -> Answer:
        cut = next((i for i, t in enumerate(new) if t in self.eos_ids), None)
        kept = new if cut is None else new[:cut]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Answer(text, len(prompt), len(kept) + (cut is not None), seconds)

    def oom_answer(self, unit: WorkUnit) -> Answer:
        """The answer of a unit that does not fit in memory alone."""
        return Answer("", len(self.prompt_ids(unit)), 0, 0.0, oom=True)

    def free_memory(self) -> None:
        """Release cached device memory after an out-of-memory error."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_engine(cfg: GenerateConfig) -> Engine:
    """Load tokenizer, model and adapter as the config asks; raise ModelError when impossible."""
    quiet_transformers()
    if looks_local(cfg.base_model) and not Path(cfg.base_model).expanduser().is_dir():
        raise ModelError(
            f"{cfg.base_model}: no such model directory",
            hint="give --base-model a local model directory or a hub id (try `prefgen tiny-model DIR`)",
        )
    device = pick_device(cfg.device)
    try:
        tokenizer = load_tokenizer(cfg.base_model)
        fault_point("mid_model_load")
        model = load_model(cfg.base_model, device)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model {cfg.base_model}: {exc}") from exc
    model, merged = attach_adapter(model, cfg.adapter_path)
    return Engine(model, tokenizer, device, cfg, merged)
