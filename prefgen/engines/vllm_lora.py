"""How the vLLM engine applies a LoRA adapter (`--lora`), chosen per platform and model.

- `native`: vLLM applies the adapter at run time (`enable_lora`, one `LoRARequest` sent with
  every request, `max_lora_rank` from the adapter's `r`): no copy of the model, on GPUs where
  vLLM serves the model's LoRA (fused-MoE models since vLLM ~0.11.2).
- `merge`: the adapter merged once into a cached model directory (engines/loading.py), which
  decodes as fast as the base model but costs a full copy of it on disk (~61 GB in bf16 for a
  30B model): the disk it needs is said, and checked, before the merge starts.
- `auto` (the default): native on a GPU where vLLM's model class supports LoRA, merge
  otherwise, and on the CPU, where vLLM's MoE LoRA needs Triton kernels its CPU build lacks.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from prefgen.config import GenerateConfig
from prefgen.engines.loading import merge_key, merged_cache_root, merged_model
from prefgen.errors import ModelError

log = logging.getLogger("prefgen")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
GB = 1e9


def choose_lora(cfg: GenerateConfig, device: str, supported=None) -> str:
    """ "native" or "merge" for a run with an adapter ("" without one): `--lora` as given, and for
    `auto` native on CUDA where vLLM supports the model's LoRA (`supported`: that answer, for
    tests; None: asked of vLLM)."""
    if not cfg.adapter_path or not Path(cfg.adapter_path).expanduser().exists():
        return ""  # no adapter: loading.merged_model warns about a missing one
    if cfg.lora != "auto":
        return cfg.lora
    if device != "cuda":
        return "merge"
    if supported is None:
        supported = vllm_supports_lora(cfg.base_model)
    return "native" if supported else "merge"


def vllm_supports_lora(base_model: str) -> bool:
    """Whether vLLM's class for the model's architecture supports LoRA (False when unknown)."""
    try:
        config = json.loads((Path(base_model).expanduser() / "config.json").read_text())
        from vllm.model_executor.models import ModelRegistry
        from vllm.model_executor.models.interfaces import supports_lora

        # vLLM has no public question for this; its registry loads the model class by name
        classes = [ModelRegistry._try_load_model_cls(arch) for arch in config.get("architectures", [])]
    except Exception as exc:  # noqa: BLE001 (any doubt means merge, which always works)
        log.debug("cannot tell whether vLLM serves LoRA for %s: %s", base_model, exc)
        return False
    return any(cls is not None and supports_lora(cls) for cls in classes)


def allowed_ranks() -> tuple[int, ...]:
    """The max LoRA ranks this vLLM accepts (its `MaxLoRARanks`)."""
    import typing

    from vllm.config.lora import MaxLoRARanks

    return tuple(sorted(typing.get_args(MaxLoRARanks)))


def lora_rank(adapter: str, ranks: tuple[int, ...] | None = None) -> int:
    """vLLM's `max_lora_rank` for the adapter: the largest rank in its adapter_config.json
    (`r` and any `rank_pattern`), rounded up to a rank vLLM accepts."""
    path = Path(adapter).expanduser() / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the adapter's config {path}: {exc}") from exc
    rank = max([int(config.get("r") or 8), *(int(r) for r in (config.get("rank_pattern") or {}).values())])
    ranks = ranks or allowed_ranks()
    fitting = [allowed for allowed in ranks if allowed >= rank]
    if not fitting:
        raise ModelError(
            f"the adapter's rank {rank} is above the largest vLLM serves natively ({max(ranks)})",
            hint="add --lora merge to merge it into the model",
        )
    return fitting[0]


def lora_request(adapter: str):
    """The `LoRARequest` every request carries under `--lora native` (one adapter, id 1)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest("adapter", 1, str(Path(adapter).expanduser().resolve()))


def weights_size(base_model: str) -> int:
    """Bytes of the model's weight files (what a merged copy of it takes); 0 when not a local
    directory."""
    base = Path(base_model).expanduser()
    if not base.is_dir():
        return 0
    return sum(p.stat().st_size for p in base.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def merge_with_room(base_model: str, adapter: str) -> tuple[str, bool]:
    """`loading.merged_model`, after saying the disk the merge needs and refusing when the
    merged-model cache lacks it; a merge already cached costs nothing."""
    root = merged_cache_root()
    if not adapter or not Path(adapter).expanduser().exists():
        return merged_model(base_model, adapter)
    if (root / merge_key(base_model, adapter) / "config.json").exists():
        return merged_model(base_model, adapter)
    needed = weights_size(base_model)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if needed and free < needed * 1.05:  # the copy, plus its tokenizer and configs
        raise ModelError(
            f"merging the adapter needs {needed / GB:.1f} GB in {root}, which has {free / GB:.1f} GB free",
            hint="free some disk, point PREFGEN_MERGED_CACHE at a disk with room, or on a GPU "
            "serve the adapter without a copy (--lora native)",
        )
    size = f"{needed / GB:.1f} GB" if needed else "the model's size"
    log.info("merging the adapter: writes %s to %s (%.1f GB free); this takes a while", size, root, free / GB)
    started = time.monotonic()
    result = merged_model(base_model, adapter)
    log.info("merged in %.0f s: %s", time.monotonic() - started, result[0])
    return result
