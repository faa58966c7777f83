"""A larger --max-new-tokens on an existing run: longer answers only where they were cut.

The same command run again with a larger cap is refused elsewhere as a fingerprint mismatch; here
it moves the run so far aside, output and ledger (`pairs.jsonl` -> `pairs.cap12.jsonl` and its
ledger, said in a log line), and runs afresh at OUT as with `--reuse-answers` pointing at it
(reuse.py): the units that ended before the old cap are reused, the ones cut at it are generated
again, and everything is judged anew, so the output is what a fresh run at the larger cap gives.
A smaller cap is refused, naming both.

Crash-safe by a marker, OUT.raising.json, written (and fsynced) before anything moves and removed
once the new ledger records where its answers come from (meta `raised_from`):
1. the marker;  2. the old ledger's `output_path` set to the aside output, its journal mode DELETE
(its -wal checkpointed and removed: nothing is left under the old name);  3. OUT renamed aside;
4. the ledger renamed aside;  5. the new ledger made, `raised_from` recorded;  6. the marker
removed. A start that finds the marker redoes 2-6, each step skipped where it was done; a start
that finds `raised_from` keeps reusing from there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import orjson

from prefgen.config import GenerateConfig
from prefgen.errors import OutputError, SettingsMismatch
from prefgen.files.atomic import atomic_write, fsync_directory
from prefgen.ledger.keys import GENERATION_IDENTITY, RAISED_FROM
from prefgen.ledger.store import Ledger
from prefgen.paths import LEDGER_SUFFIX
from prefgen.resume.fingerprint import changed, fingerprint_of
from prefgen.resume.identity import generation_identity
from prefgen.resume.settings import resolve
from prefgen.runtime.faults import fault_point

log = logging.getLogger("prefgen")


def marker_path(output: Path) -> Path:
    return output.with_name(output.name + ".raising.json")


def aside(path: Path, cap: int) -> Path:
    """`pairs.jsonl` -> `pairs.cap12.jsonl`; `pairs.jsonl.ledger.sqlite` -> `pairs.cap12.jsonl.ledger.sqlite`."""
    tail = LEDGER_SUFFIX if path.name.endswith(LEDGER_SUFFIX) else ""
    base = path.name[: len(path.name) - len(tail)]
    stem, dot, suffix = base.rpartition(".")
    return path.with_name((f"{stem}.cap{cap}.{suffix}" if dot and stem else f"{base}.cap{cap}") + tail)


def prepare(cfg: GenerateConfig) -> tuple[GenerateConfig, Path | None]:
    """Called holding the output's and the ledger's locks, before the ledger is opened: finish a
    move a crash interrupted, or start one when the ledger's run differs from `cfg` only by a
    smaller --max-new-tokens. Returns `cfg` (reusing from the moved ledger, when one was moved) and
    the marker to remove once the new ledger records it (None when nothing moved)."""
    output, ledger_path = cfg.output_path, cfg.ledger_path
    marker = marker_path(output)
    if marker.exists():
        plan = orjson.loads(marker.read_bytes())
        if cfg.max_new_tokens < plan["old_cap"]:
            raise lowering(Path(plan["ledger"]), plan["old_cap"], cfg.max_new_tokens)
        finish_move(plan, output, ledger_path)
        return dataclasses.replace(cfg, reuse_answers=plan["ledger"]), marker
    if cfg.reuse_answers or not ledger_path.is_file():
        return cfg, None
    old_cap = smaller_cap(cfg, ledger_path)
    if old_cap is None:
        return cfg, None
    plan = moved_names(cfg, old_cap)
    taken = [path for path in (plan["output"], plan["ledger"], plan.get("array")) if path and Path(path).exists()]
    if taken:
        raise OutputError(
            f"raising --max-new-tokens {old_cap} -> {cfg.max_new_tokens} moves the run so far to"
            f" {plan['output']}, but {', '.join(taken)} already exists",
            hint="move it away (or write to a new --output with --reuse-answers OUTPUT), then run again",
        )
    with atomic_write(marker) as handle:
        handle.write(orjson.dumps(plan))
    fault_point("after_raise_marker")
    finish_move(plan, output, ledger_path)
    return dataclasses.replace(cfg, reuse_answers=plan["ledger"]), marker


def moved_names(cfg: GenerateConfig, old_cap: int) -> dict:
    """Where the run so far goes: the names its own command would have had with --output
    `aside(OUTPUT)` (and `aside(LEDGER)` for a --ledger given), so that it stays a run of its own
    (`pairs.json` -> `pairs.cap12.json`, its journal `pairs.cap12.journal.jsonl`, its ledger
    `pairs.cap12.json.ledger.sqlite`); a finished .json run's array goes too."""
    output = str(aside(Path(cfg.output), old_cap))
    moved = dataclasses.replace(cfg, output=output, ledger=cfg.ledger and str(aside(Path(cfg.ledger), old_cap)))
    plan = {"output": str(moved.output_path), "ledger": str(moved.ledger_path)}
    if cfg.output_path != Path(cfg.output) and cfg.world_size == 1:  # a .json output: the array too
        plan.update(array=output, array_from=cfg.output)
    return {**plan, "old_cap": old_cap, "new_cap": cfg.max_new_tokens}


def smaller_cap(cfg: GenerateConfig, ledger_path: Path) -> int | None:
    """The ledger's --max-new-tokens when its run differs from `cfg` only by that, and it is
    smaller (a larger one is refused here, naming both); None otherwise (the usual checks then
    accept the run or refuse it)."""
    ledger = Ledger(ledger_path)  # as the run would open it: brought up to date
    try:
        stored, identity, work = ledger.fingerprint(), ledger.meta_json(GENERATION_IDENTITY), ledger.holds_work()
    finally:
        ledger.close()
    if stored is None or not work:  # nothing committed: the run takes the ledger over (resume/settings.py)
        return None
    if changed(stored, fingerprint_of(resolve(cfg, stored))) != {"max_new_tokens"}:
        return None
    old_cap = stored["max_new_tokens"]
    if old_cap > cfg.max_new_tokens:
        raise lowering(ledger_path, old_cap, cfg.max_new_tokens)
    if identity is None or identity != generation_identity(cfg):
        return None  # another model or engine library: refused as usual
    return old_cap


def lowering(ledger_path: Path, old_cap: int, new_cap: int) -> SettingsMismatch:
    return SettingsMismatch(
        f"{ledger_path} was made at --max-new-tokens {old_cap}: lowering it to {new_cap} is refused"
        " (its answers may run past the smaller cap)",
        hint=f"run with --max-new-tokens {old_cap}, or a larger cap (only the answers cut at {old_cap} are"
        " generated again), or pass a new --output to start a separate run",
    )


def finish_move(plan: dict, output: Path, ledger_path: Path) -> None:
    """Move the output, then the ledger, aside, each unless done already (a crash between them)."""
    moves = [(output, Path(plan["output"])), (ledger_path, Path(plan["ledger"]))]
    if plan.get("array"):  # a .json output's array, if the run so far finished and wrote it
        moves.insert(1, (Path(plan["array_from"]), Path(plan["array"])))
    if ledger_path.exists() and not Path(plan["ledger"]).exists():
        ledger = Ledger(ledger_path)  # replays a -wal a killed run left
        try:
            ledger.hand_over(Path(plan["output"]))  # names the moved output; its -wal checkpointed, removed
        finally:
            ledger.close()
        if Path(f"{ledger_path}-wal").exists():
            raise OutputError(f"{ledger_path}: its -wal file is still there", hint="is another process reading it?")
    for number, (source, target) in enumerate(moves):
        if source.exists() and not target.exists():
            os.replace(source, target)
            fsync_directory(target.parent)
        if number == len(moves) - 2:
            fault_point("mid_raise_move")
    if not ledger_path.exists():  # a reader's -shm of the moved ledger (its -wal is gone)
        Path(f"{ledger_path}-shm").unlink(missing_ok=True)
    fault_point("after_raise_move")
    log.info(
        "--max-new-tokens %d -> %d: the run so far is now %s (ledger %s); its answers that ended before"
        " %d tokens are reused, those cut at the cap are generated again",
        plan["old_cap"],
        plan["new_cap"],
        plan.get("array") or plan["output"],
        plan["ledger"],
        plan["old_cap"],
    )


def adopt(cfg: GenerateConfig, ledger: Ledger, marker: Path | None) -> GenerateConfig:
    """With the new ledger open: record the moved ledger it reuses from and remove the marker; or,
    resuming a raised run, reuse from the ledger it recorded (while that is still there)."""
    if marker is not None:
        ledger.update_meta({RAISED_FROM: cfg.reuse_answers})
        marker.unlink()
        fsync_directory(marker.parent)
        return cfg
    raised_from = ledger.meta(RAISED_FROM)
    if raised_from and not cfg.reuse_answers and Path(raised_from).is_file():
        return dataclasses.replace(cfg, reuse_answers=raised_from)
    return cfg
