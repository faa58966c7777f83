"""`--reuse-answers OLD`: a run whose answers come from an earlier run's ledger where it has them.

Everything but generation is cheap, so a run that only judges differently (--db-root added,
--equivalence, --dedup-rejects, --pairs onpolicy, --answer full) takes each unit's answer from
OLD's ledger by (sample_index, reject_index), when OLD's generation fingerprint (config's
GENERATION_FIELDS and identity.py's generation_identity) is the new run's and the unit's record
hash and seed match. `ReuseEngine` is an Engine: the run loop drives it as any other, and it hands
what OLD lacks to the real engine, loaded only then: when OLD has every answer, no model is loaded.
A unit OLD ran out of memory on (no answer stored) is generated again.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

import orjson

from prefgen.config import GENERATION_FIELDS, GenerateConfig
from prefgen.engines.base import Backoff, Engine
from prefgen.errors import ConfigError, SettingsMismatch
from prefgen.identity import META_KEY, generation_identity
from prefgen.paths import LEDGER_SUFFIX, ledger_beside
from prefgen.units import TOO_LONG, Answer, WorkUnit


def old_ledger_path(old: str) -> Path:
    """The ledger of OLD: OLD itself when it is a ledger, else the one beside the output."""
    path = Path(old).expanduser()
    ledger = path if path.name.endswith(LEDGER_SUFFIX) else ledger_beside(path)
    if not ledger.is_file():
        raise ConfigError(
            f"--reuse-answers {old}: no ledger at {ledger}",
            hint="give the output (or the ledger) of an earlier prefgen generate run",
        )
    return ledger


def read_answers(cfg: GenerateConfig, old: str) -> dict[tuple[int, int], dict]:
    """OLD's stored answers by (sample, reject), after refusing an OLD whose generation differs."""
    conn = sqlite3.connect(f"file:{old_ledger_path(old)}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        meta = {row["key"]: row["value"] for row in conn.execute("select key, value from meta")}
        check_generation(cfg, old, orjson.loads(meta.get("fingerprint") or "{}"), meta.get(META_KEY))
        rows = conn.execute(
            "select sample_index, reject_index, seed, status, record_hash, raw_answer, prompt_tokens,"
            " new_tokens, gen_seconds from units where raw_answer is not null"
        )
        return {(row["sample_index"], row["reject_index"]): dict(row) for row in rows}
    finally:
        conn.close()


def check_generation(cfg: GenerateConfig, old: str, fingerprint: dict, identity: str | None) -> None:
    """Refuse an OLD whose answers another model, sampling or prompt would have given."""
    now = cfg.fingerprint()
    differing = [
        f"{key} (old: {fingerprint.get(key)!r}, now: {now.get(key)!r})"
        for key in sorted(GENERATION_FIELDS)
        if fingerprint.get(key) != now.get(key)
    ]
    if identity is None:
        differing.append("its model identities were never recorded (made by an older prefgen)")
    else:
        stored, current = orjson.loads(identity), generation_identity(cfg)
        differing += [
            f"{key} (old: {stored.get(key)!r}, now: {current.get(key)!r})"
            for key in sorted(set(stored) | set(current))
            if stored.get(key) != current.get(key)
        ]
    if differing:
        raise SettingsMismatch(
            f"--reuse-answers {old}: its answers were generated otherwise: " + "; ".join(differing),
            hint="answers can be reused only with the same model, adapter, prompt and sampling settings",
        )


class ReuseEngine:
    """An Engine answering from an earlier run's answers, and from the real engine for the rest."""

    def __init__(self, answers: dict[tuple[int, int], dict], load: Callable[[], Engine], device: str):
        self.stored, self._load, self._real = answers, load, None
        self.device, self.adapter_merged = device, False
        self.reused, self.saved_seconds = 0, 0.0

    @property
    def real(self) -> Engine:
        """The real engine, loaded on first need."""
        if self._real is None:
            self._real = self._load()
            self.device, self.adapter_merged = self._real.device, self._real.adapter_merged
        return self._real

    @property
    def overlap_default(self) -> bool:
        return self._real is not None and self._real.overlap_default

    def lookup(self, unit: WorkUnit) -> dict | None:
        row = self.stored.get(unit.key)
        if row is None or row["seed"] != unit.seed or row["record_hash"] != unit.record.hash:
            return None
        return row

    def prompt_length(self, unit: WorkUnit) -> int:
        row = self.lookup(unit)
        return row["prompt_tokens"] if row else self.real.prompt_length(unit)

    def find_batch_size(self, prompt_length: int) -> int:
        return self.real.find_batch_size(prompt_length)

    def start(self, units: list[WorkUnit]) -> Future:
        missing = [unit for unit in units if self.lookup(unit) is None]
        inner = self.real.start(missing) if missing else None
        future: Future = Future()
        future.set_result((missing, inner))
        return future

    def answers(self, units: list[WorkUnit], future: Future) -> tuple[list[Answer], list[Backoff]]:
        missing, inner = future.result()
        generated, backoffs = self.real.answers(missing, inner) if missing else ([], [])
        fresh = dict(zip((unit.key for unit in missing), generated, strict=True))
        result = []
        for unit in units:
            row = self.lookup(unit)
            if row is None:
                result.append(fresh[unit.key])
                continue
            self.reused += 1
            self.saved_seconds += row["gen_seconds"] or 0.0
            text, tokens = row["raw_answer"], row["new_tokens"] or 0
            seconds, too_long = row["gen_seconds"] or 0.0, row["status"] == TOO_LONG
            result.append(Answer(text, row["prompt_tokens"], tokens, seconds, too_long=too_long, source="reused"))
        return result, backoffs

    def close(self) -> None:
        if self._real is not None:
            self._real.close()


def reuse_engine(cfg: GenerateConfig, load: Callable[[], Engine]) -> ReuseEngine:
    """The engine of a --reuse-answers run: OLD's answers first, `load()` for the rest."""
    return ReuseEngine(read_answers(cfg, cfg.reuse_answers), load, "none (answers reused)")



def answer_sources(db) -> dict:
    """Answers generated and reused in a ledger, and the generation seconds the reused ones had
    cost the run that made them (the GPU time reuse saved); a ledger before `source`: all generated."""
    has_source = "source" in db["units"].columns_dict
    reused = "source = 'reused'" if has_source else "0"
    sql = (
        f"select count(*) - coalesce(sum({reused}), 0) as generated, coalesce(sum({reused}), 0) as reused,"
        f" coalesce(sum(case when {reused} then gen_seconds end), 0.0) as saved_s"
        " from units where raw_answer is not null"
    )
    row = next(db.query(sql))
    return {"generated": row["generated"], "reused": row["reused"], "saved_gpu_s": round(row["saved_s"], 3)}


def reuse_line(answers: dict) -> str:
    """The line of `ledger status` and of generate's summary saying what --reuse-answers saved."""
    return (
        f"Answers  {answers['reused']} reused from an earlier run, {answers['generated']} generated;"
        f" {answers['saved_gpu_s']:.1f}s of generation saved"
    )
