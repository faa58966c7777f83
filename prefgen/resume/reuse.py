"""`--reuse-answers OLD`: a run whose answers come from an earlier run's ledger where it has them.

Everything but generation is cheap, so a run that only judges differently (--db-root added,
--equivalence, --dedup-rejects, --pairs onpolicy, --answer full) takes each unit's answer from
OLD's ledger by (sample_index, reject_index), when OLD's generation fingerprint (fingerprint.py's
GENERATION_FIELDS and identity.py's generation_identity) is the new run's and the unit's record
hash and seed match. `ReuseEngine` is an Engine: the run loop drives it as any other, and it hands
what OLD lacks to the real engine, loaded only then: when OLD has every answer, no model is loaded.
A unit OLD ran out of memory on (no answer stored) is generated again. OLD's answers are read as
asked, 512 samples at a time (ledger/answers.py's StoredAnswers): a run, and each of a Ray run's
workers, holds at most 4,096 samples' answers, never all of OLD's millions.

A larger --max-new-tokens than OLD's is accepted (a smaller one is refused): each unit is sampled
with its own seed, token after token, so its first N tokens are the same at any cap (the prefix
property, tested per engine). A unit of OLD that ended (an end-of-sequence token, or the context's
room) before OLD's cap is thus what the larger cap gives too, and is reused; one cut at OLD's cap
is generated again (source `regenerated`). For OLD's rows made before units.truncated, a unit is
taken as cut when its new tokens reach OLD's cap.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

from prefgen.config import GenerateConfig
from prefgen.engines.base import Backoff, Engine
from prefgen.errors import ConfigError, SettingsMismatch
from prefgen.ledger import keys
from prefgen.ledger.answers import StoredAnswers
from prefgen.ledger.store import Ledger
from prefgen.paths import LEDGER_SUFFIX, ledger_beside
from prefgen.resume.fingerprint import GENERATION_FIELDS, differences, fingerprint_of
from prefgen.resume.identity import generation_identity
from prefgen.units import REGENERATED, REUSED, TOO_LONG, Answer, WorkUnit


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


@dataclasses.dataclass
class OldAnswers:
    """OLD's stored answers by (sample, reject), and the --max-new-tokens they were generated at."""

    rows: StoredAnswers  # by (sample, reject), read as asked
    cap: int  # OLD's --max-new-tokens
    new_cap: int  # this run's: larger or equal

    def cut(self, row: dict) -> bool:
        """Whether the larger cap would give this unit more tokens: it stopped at OLD's cap (for a
        row made before units.truncated: its new tokens reach the cap)."""
        return self.new_cap > self.cap and row["truncated"] != 0 and (row["new_tokens"] or 0) >= self.cap


def check_old(cfg: GenerateConfig) -> None:
    """Refuse, before a run starts, an OLD that is not there or whose answers were generated
    otherwise (its settings compared as resolved for a new ledger: the generation part does not
    depend on the judging settings)."""
    from prefgen.resume.settings import resolve

    ledger = Ledger(old_ledger_path(cfg.reuse_answers), readonly=True)
    try:
        fingerprint, identity = ledger.fingerprint() or {}, ledger.meta_json(keys.GENERATION_IDENTITY)
    finally:
        ledger.close()
    check_generation(resolve(cfg, None), cfg.reuse_answers, fingerprint, identity)


def read_answers(cfg: GenerateConfig, old: str) -> OldAnswers:
    """OLD's stored answers, after refusing an OLD whose generation differs (but for a smaller cap)."""
    ledger = Ledger(old_ledger_path(old), readonly=True)
    try:
        fingerprint = ledger.fingerprint() or {}
        check_generation(cfg, old, fingerprint, ledger.meta_json(keys.GENERATION_IDENTITY))
    finally:
        ledger.close()
    return OldAnswers(
        StoredAnswers(ledger.path), fingerprint.get("max_new_tokens") or cfg.max_new_tokens, cfg.max_new_tokens
    )


def check_generation(cfg: GenerateConfig, old: str, fingerprint: dict, identity: dict | None) -> None:
    """Refuse an OLD whose answers another model, sampling or prompt would have given, or a
    larger cap than this run's (its answers may run past this run's cap)."""
    now = fingerprint_of(cfg)
    old_cap, new_cap = fingerprint.get("max_new_tokens"), now["max_new_tokens"]
    if isinstance(old_cap, int) and old_cap > new_cap:
        raise SettingsMismatch(
            f"--reuse-answers {old}: its answers were generated at --max-new-tokens {old_cap},"
            f" more than this run's {new_cap}: lowering the cap is refused",
            hint=f"run with --max-new-tokens {old_cap} or more, or without --reuse-answers",
        )
    differing = differences(fingerprint, now, GENERATION_FIELDS - {"max_new_tokens"}, label="old")
    if not isinstance(old_cap, int):
        differing.append(f"max_new_tokens (old: {old_cap!r}, now: {new_cap!r})")
    if identity is None:
        differing.append("its model identities were never recorded (made by an older prefgen)")
    else:
        differing += differences(identity, generation_identity(cfg), label="old")
    if differing:
        raise SettingsMismatch(
            f"--reuse-answers {old}: its answers were generated otherwise: " + "; ".join(differing),
            hint="answers can be reused only with the same model, adapter, prompt and sampling settings",
        )


class ReuseEngine:
    """An Engine answering from an earlier run's answers, and from the real engine for the rest."""

    def __init__(self, answers: OldAnswers, load: Callable[[], Engine], device: str):
        self.old, self._load, self._real = answers, load, None
        self.device, self.adapter_merged = device, False
        self.settings: dict = {}
        self.reused, self.regenerated, self.saved_seconds = 0, 0, 0.0

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

    def stored(self, unit: WorkUnit) -> dict | None:
        """OLD's row of this unit, if it answered this very unit (same record and seed)."""
        row = self.old.rows.get(unit.key)
        if row is None or row["seed"] != unit.seed or row["record_hash"] != unit.record.hash:
            return None
        return row

    def lookup(self, unit: WorkUnit) -> dict | None:
        """OLD's row of this unit when its answer is this run's too (not cut at a smaller cap)."""
        row = self.stored(unit)
        return None if row is None or self.old.cut(row) else row

    def prompt_length(self, unit: WorkUnit) -> int:
        row = self.stored(unit)
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
                answer = fresh[unit.key]
                if self.stored(unit) is not None:  # cut at OLD's smaller cap: generated again
                    self.regenerated += 1
                    answer = dataclasses.replace(answer, source=REGENERATED)
                result.append(answer)
                continue
            self.reused += 1
            self.saved_seconds += row["gen_seconds"] or 0.0
            text, tokens = row["raw_answer"], row["new_tokens"] or 0
            seconds, too_long = row["gen_seconds"] or 0.0, row["status"] == TOO_LONG
            truncated = bool(row["truncated"]) if row["truncated"] is not None else tokens >= self.old.cap
            answer = Answer(text, row["prompt_tokens"], tokens, seconds, too_long=too_long, source=REUSED)
            result.append(dataclasses.replace(answer, truncated=truncated and not too_long))
        return result, backoffs

    def close(self) -> None:
        if self._real is not None:
            self._real.close()


def reuse_engine(cfg: GenerateConfig, load: Callable[[], Engine]) -> ReuseEngine:
    """The engine of a --reuse-answers run: OLD's answers first, `load()` for the rest."""
    return ReuseEngine(read_answers(cfg, cfg.reuse_answers), load, "none (answers reused)")
