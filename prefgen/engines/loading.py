"""What both engines load through transformers: the model reference check, the tokenizer and
what the run loop does with it (`TokenizerSide`), the tokens that end an answer, the model and
its LoRA adapter, and the cache of models with an adapter merged in (for vLLM).

It imports torch, transformers and peft inside the functions that need them, so importing
prefgen (and every other CLI command) stays instant.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prefgen.config import looks_local, resolve_model_ref
from prefgen.engines.base import prompt_fits
from prefgen.errors import ModelError
from prefgen.units import Answer

log = logging.getLogger("prefgen")

PROMPT_CACHE_SIZE = 4096  # tokenized prompts kept; batches and look-ahead windows are far smaller
MERGED_CACHE_VAR = "PREFGEN_MERGED_CACHE"  # where merged adapters are kept [~/.cache/prefgen/merged]


def check_model_ref(ref: str) -> None:
    """Refuse a local model directory that is not there, before any engine starts."""
    if looks_local(ref) and not Path(ref).expanduser().is_dir():
        raise ModelError(
            f"{ref}: no such model directory",
            hint="give --base-model a local model directory or a hub id (try `prefgen tiny-model DIR`)",
        )


def hub_hint(ref: str) -> str:
    """What a model that failed to load was taken for: a hub id is said to be one, with where no
    local folder was found (a typo in a path's first folder looks like a hub id)."""
    if looks_local(ref):
        return "give a model directory holding config.json and the tokenizer's files"
    first = Path(ref).parts[0]
    return (
        f"{ref} was taken as a hub id: there is no local folder {first}/ in {Path.cwd()}; if a local path"
        " was meant, fix it; else check the id and the network (HF_HUB_OFFLINE=1 skips the hub's retries)"
    )


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


def eos_token_ids(generation_config, tokenizer) -> list[int]:
    """The tokens that end an answer: the model's generation config's and the tokenizer's."""
    ids = getattr(generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def model_context(model_config, max_model_len: int = 0) -> int:
    """The context a prompt must fit: the model's positions (`max_position_embeddings` of its
    config), or `--max-model-len` where given and smaller (0: no limit known)."""
    positions = getattr(model_config, "max_position_embeddings", None) or 0
    if max_model_len and positions and max_model_len > positions:
        log.warning(
            "--max-model-len %d is more than the model's %d positions: prompts must fit %d",
            max_model_len,
            positions,
            positions,
        )
        return positions
    return max_model_len or positions


class TokenizerSide:
    """What both engines do with the Hugging Face tokenizer, in the run loop's thread: prompt
    token ids (the chat template as LLaMA-Factory trained on it, cached per sample: its rejects
    share them) and answers decoded from new tokens. A prompt that does not fit `context` keeps
    only its length: the engine answers it `too_long` and never computes on it."""

    def init_tokenizer(self, tokenizer, system: str, eos_ids: list[int], context: int = 0) -> None:
        """Take the tokenizer, the system prompt, the tokens that end an answer and the context
        a prompt must fit (0: no limit)."""
        from prefgen.flow.prompts import PromptBuilder

        self.tokenizer = tokenizer
        self.prompt = PromptBuilder(tokenizer, system)
        self.eos_ids = eos_ids
        self.context = context
        self.longest_fitting = 0  # the longest prompt seen that fits (what `auto` sizes batches for)
        self._prompt_cache: dict[tuple[int, str], list[int] | int] = {}  # ids, or a too-long length

    def _tokenized(self, unit) -> list[int] | int:
        key = (unit.sample_index, unit.record.hash)
        ids = self._prompt_cache.get(key)
        if ids is None:
            if len(self._prompt_cache) >= PROMPT_CACHE_SIZE:
                self._prompt_cache.clear()
            ids = self.tokenizer(self.prompt(unit.record), add_special_tokens=False)["input_ids"]
            if not prompt_fits(len(ids), self.context):
                ids = len(ids)  # a record of any size costs a number, not its tokens, from here on
            else:
                self.longest_fitting = max(self.longest_fitting, len(ids))
            self._prompt_cache[key] = ids
        return ids

    def prompt_ids(self, unit) -> list[int] | None:
        """The token ids of a unit's prompt; None when it does not fit the context."""
        ids = self._tokenized(unit)
        return None if isinstance(ids, int) else ids

    def prompt_length(self, unit) -> int:
        """Tokens in the unit's prompt."""
        ids = self._tokenized(unit)
        return ids if isinstance(ids, int) else len(ids)

    def answer(self, prompt: list[int], new: list[int] | None, seconds: float) -> Answer:
        """Decode one unit's new tokens (None: the unit did not fit in memory alone)."""
        if new is None:
            return Answer("", len(prompt), 0, 0.0, oom=True)
        cut = next((i for i, t in enumerate(new) if t in self.eos_ids), None)
        kept = new if cut is None else new[:cut]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        # no end-of-sequence token: the cap (or the context's room) cut it
        return Answer(text, len(prompt), len(kept) + (cut is not None), seconds, truncated=cut is None)


def load_model(ref: str, device: str, dtype: str = ""):
    """The base model: bf16 with device_map on CUDA, float32 on CPU (or the dtype given)."""
    import torch
    from transformers import AutoModelForCausalLM

    if device.startswith("cuda"):
        device_map = "auto" if device == "cuda" else {"": device}
        return AutoModelForCausalLM.from_pretrained(ref, dtype=dtype or torch.bfloat16, device_map=device_map)
    return AutoModelForCausalLM.from_pretrained(ref, dtype=dtype or torch.float32).to(device)


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


def merged_cache_root() -> Path:
    """Where models with an adapter merged in are kept ($PREFGEN_MERGED_CACHE)."""
    default = Path.home() / ".cache" / "prefgen" / "merged"
    return Path(os.environ.get(MERGED_CACHE_VAR) or default).expanduser()


def merge_key(base: str, adapter: str) -> str:
    """Names a merged model: the base (its path, configs, and weight files by name and size)
    and the adapter (its files' bytes)."""
    import hashlib

    digest = hashlib.sha256(resolve_model_ref(base).encode())
    base_dir = Path(base).expanduser()
    if base_dir.is_dir():
        for path in sorted(base_dir.iterdir()):
            if path.suffix == ".json":
                digest.update(path.name.encode() + path.read_bytes())
            elif path.is_file():
                digest.update(f"{path.name}:{path.stat().st_size}".encode())
    for path in sorted(p for p in Path(adapter).expanduser().rglob("*") if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:20]


def merged_model(base: str, adapter: str) -> tuple[str, bool]:
    """A model directory with the adapter merged into the base, built once and cached (other
    processes wait for the one building it); without an adapter, the base itself."""
    import fcntl
    import shutil

    if not adapter:
        return base, False
    if not Path(adapter).expanduser().exists():
        log.warning("adapter %s does not exist: continuing with the base model alone", adapter)
        return base, False
    root = merged_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / merge_key(base, adapter)
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            log.info("merging the adapter %s into %s (once: later runs reuse it)", adapter, target)
            building = root / f"{target.name}.building"
            shutil.rmtree(building, ignore_errors=True)
            try:
                model, _ = attach_adapter(load_model(base, "cpu", dtype="auto"), adapter)
                model.save_pretrained(building)
                load_tokenizer(base).save_pretrained(building)
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot merge the adapter {adapter} into {base}: {exc}") from exc
            os.replace(building, target)
    return str(target), True
