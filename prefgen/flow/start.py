"""Step 0 of the flow: every check that can fail at start-up, before any file is made.

A start that is refused leaves the directory exactly as it was, so the corrected command simply
runs: nothing here creates, opens for writing or locks a file. What is checked: the output and
ledger paths are writable; Ray is installed for --executor ray; the model and adapter are where
a local path says (a local path that does not exist fails at once, without the network); the
engine is installed; the input is readable, every record valid, at least one there; with
--db-root, the settings work and every database the records name is there (--allow-missing-db
judges such records unverifiable).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from prefgen.config import DB_FIELD_HINT, GenerateConfig, looks_local
from prefgen.errors import ConfigError, InputError, ModelError, OutputError
from prefgen.flow.records import iter_records, require_string_field
from prefgen.sql.execute import database_path

MISSING_SHOWN = 5  # missing databases named in the error


def check_writable(path: Path, what: str) -> None:
    """Refuse, before anything is touched, a path prefgen could not write."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory", hint=f"give {what} a file path")
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: its directory does not exist", hint=f"create {parent} first")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what} {path} is not writable", hint="check the permissions")


def local_path(ref: str) -> bool:
    """Whether a model reference can only be a local path: it looks like one, or its first
    folder is here (`runs/tiny-modle` where `runs/` exists is a local mistake, not a hub id)."""
    return looks_local(ref) or Path(ref).expanduser().parent.is_dir()


def check_model(ref: str, flag: str, marker: str, what: str = "model") -> None:
    """A local model or adapter directory must exist and hold `marker`; a hub id is left to the
    engine (it is looked up only where no local folder of that name could be meant)."""
    if not ref or not local_path(ref):
        return
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise ModelError(
            f"{flag} {ref}: no such {what} directory ({path.resolve()})",
            hint=f"give the directory holding {marker}; a hub id such as Qwen/Qwen3-8B is looked up only where"
            " its first part is no local folder",
        )
    if not (path / marker).is_file():
        raise ModelError(
            f"{flag} {ref} is not a {what} directory: it has no {marker}", hint=f"give the directory holding {marker}"
        )


def check_engine(cfg: GenerateConfig) -> None:
    """The engine's library is installed (looked up, not imported)."""
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("--engine vllm needs vLLM, which is not installed", hint="pip install 'prefgen[vllm]'")


def check_executor(cfg: GenerateConfig) -> None:
    """--executor ray: Ray is installed (looked up, not imported)."""
    if cfg.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("--executor ray needs Ray, which is not installed", hint="pip install 'prefgen[ray]'")


def scan_input(cfg: GenerateConfig) -> set[str]:
    """Read every record of the input once (each is validated as it is read); return the
    database ids this process's records name (with --db-root). Refuse an input without a record
    (a rank whose share is empty is fine: it has nothing to do, as `merge` expects)."""
    count, db_ids = 0, set()
    for record in iter_records(cfg.sft_data, cfg.max_samples):
        count += 1
        if cfg.db_root and record.index % cfg.world_size == cfg.rank:
            (record,) = require_string_field([record], cfg.db_field, cfg.sft_data, DB_FIELD_HINT)
            db_ids.add(record.fields[cfg.db_field])
    if not count:
        raise InputError(
            f"{cfg.sft_data} holds no record",
            hint="give Alpaca records: a JSON array or JSON Lines of {instruction, input, output}",
        )
    return db_ids


def check_reuse(cfg: GenerateConfig) -> None:
    """--reuse-answers: OLD is there and its answers are this run's (same model, adapter, prompt
    and sampling), checked read-only before anything is made."""
    from prefgen.resume.reuse import check_old

    check_old(cfg)


def check_databases(cfg: GenerateConfig, db_ids: set[str]) -> None:
    """Every database the records name is under --db-root, unless --allow-missing-db."""
    missing = sorted(db_id for db_id in db_ids if not database_path(cfg.db_root, db_id).is_file())
    if not missing or cfg.allow_missing_db:
        return
    shown = ", ".join(f"{db_id} ({database_path(cfg.db_root, db_id)})" for db_id in missing[:MISSING_SHOWN])
    more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
    raise ConfigError(
        f"--db-root {cfg.db_root}: {len(missing)} of the {len(db_ids)} databases the records name are not there:"
        f" {shown}{more}",
        hint="point --db-root at the folder holding <db_id>/<db_id>.sqlite (Spider's and BIRD's database/), or"
        " pass --allow-missing-db to judge their records' answers unverifiable",
    )


def check_start(cfg: GenerateConfig, engine_given: bool = False) -> None:
    """Refuse a start that cannot work, before a ledger, output or lock file is made.
    `engine_given`: an engine was handed in (benchmarks, tests): no model is loaded."""
    check_executor(cfg)
    check_writable(cfg.output_path, "--output")
    check_writable(cfg.ledger_path, "--ledger")
    if cfg.reuse_answers:
        check_reuse(cfg)  # the model may never load: OLD's identities are compared instead
    elif not engine_given:
        check_model(cfg.base_model, "--base-model", "config.json")
        check_model(cfg.adapter_path, "--adapter-path", "adapter_config.json", "adapter")
    if not engine_given:
        check_engine(cfg)
    if cfg.db_root:
        cfg.check.check()
    db_ids = scan_input(cfg)
    if cfg.db_root:
        check_databases(cfg, db_ids)
