"""The fingerprint: the settings a resumed run must share with its ledger, in comparable form.

It has two parts. The generation part (GENERATION_FIELDS, with the identities of identity.py)
decides each unit's text; the rest decides only which lines are written from the same answers
(judging): a change there leaves every answer as it was (--reuse-answers takes them).
Settings added after the first ledgers are in it only when they differ from what an older
ledger's run did (LEGACY), so that a ledger made before them still resumes.
"""

from __future__ import annotations

from pathlib import Path

from prefgen.config import (
    CHECK_FIELDS,
    DEFAULT_DB_VARIANT_MAX_MB,
    DEFAULT_SUSPECT_SHARE,
    LENIENT,
    GenerateConfig,
    resolve_model_ref,
)

# Settings that decide what each unit's text is, or which units there are.
FINGERPRINT_FIELDS = (
    "base_model",
    "adapter_path",
    "sft_data",
    "seed",
    "temperature",
    "top_p",
    "num_rejects",
    "max_new_tokens",
    "system",
    "dedup_rejects",
    "rank",
    "world_size",
)
# The part that decides each unit's text: all of the above but which units are written, and the
# engine's settings (in the fingerprint only when not their defaults).
GENERATION_FIELDS = frozenset(FINGERPRINT_FIELDS) - {"num_rejects", "dedup_rejects"} | {
    "engine",
    "batch_invariant",
    "lora",
}
# --pairs onpolicy and how its pairs are made; in the fingerprint only in that mode.
PAIR_FIELDS = ("pairs", "answer", "fallback")
# Judging settings added after the first ledgers, and the value that is the rule of a ledger made
# before each (unset on such a ledger, they resolve to it: settings.py); in the fingerprint only
# when they differ from it.
LEGACY = {
    "evaluator": LENIENT,
    "db_variants": 0,
    "db_variant_max_mb": DEFAULT_DB_VARIANT_MAX_MB,
    "gold_suspect": "",
    "suspect_share": DEFAULT_SUSPECT_SHARE,
}


def fingerprint_of(cfg: GenerateConfig) -> dict:
    """The fingerprint of settings resolved against their ledger (settings.resolve)."""
    values = {name: getattr(cfg, name) for name in FINGERPRINT_FIELDS}
    values["base_model"] = resolve_model_ref(cfg.base_model)
    values["adapter_path"] = resolve_model_ref(cfg.adapter_path)
    values["sft_data"] = str(Path(cfg.sft_data).expanduser().resolve())
    values["temperature"] = float(cfg.temperature)
    values["top_p"] = float(cfg.top_p)
    if cfg.attempts != cfg.num_rejects:
        values["max_attempts"] = cfg.attempts
    if cfg.db_root:
        values.update(judging_part(cfg))
    if cfg.onpolicy:
        values.update({name: getattr(cfg, name) for name in PAIR_FIELDS})
    if cfg.engine != "transformers":
        values["engine"] = cfg.engine
    if cfg.batch_invariant:
        values["batch_invariant"] = True
    if cfg.lora != "auto":  # added later: only when chosen, so that older ledgers still resume
        values["lora"] = cfg.lora
    return values


def judging_part(cfg: GenerateConfig) -> dict:
    """The --db-root settings of the fingerprint (those added later only where they differ from
    the rule of the ledgers made before them)."""
    if None in (cfg.evaluator, cfg.db_variants, cfg.gold_suspect, cfg.drop_timeout, cfg.drop_unverifiable):
        raise ValueError("the fingerprint is of settings resolved against their ledger (resume.settings.resolve)")
    judging = {name: getattr(cfg, name) for name in CHECK_FIELDS}
    judging["suspect_share"] = float(cfg.suspect_share)
    values = {k: v for k, v in judging.items() if k not in LEGACY or LEGACY[k] != v}
    values["db_root"] = str(Path(cfg.db_root).expanduser().resolve())
    values["time_limit"] = float(cfg.time_limit)
    return values


# What a setting left out of a fingerprint stands for (it is written only when not this), as
# the differences name it.
ABSENT = {"engine": "transformers", "batch_invariant": False, "lora": "auto"}


def differences(stored: dict, now: dict, keys=None, label: str = "ledger") -> list[str]:
    """Each setting that differs between two fingerprints (or among `keys`), in words, sorted."""
    names = sorted(set(stored) | set(now) if keys is None else keys)
    return [
        f"{key} ({label}: {stored.get(key, ABSENT.get(key))!r}, now: {now.get(key, ABSENT.get(key))!r})"
        for key in names
        if stored.get(key) != now.get(key)
    ]


def changed(stored: dict, now: dict) -> set[str]:
    """The names of the settings that differ between two fingerprints."""
    return {key for key in set(stored) | set(now) if stored.get(key) != now.get(key)}


def judging_only(keys) -> bool:
    """Whether a change of these settings leaves every answer as it was."""
    return not GENERATION_FIELDS.intersection(keys)
