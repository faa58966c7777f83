"""`prefgen verify`: judge an existing preference file by executing its SQL.

Streams the pairs; for each, a reject that is the gold query up to layout is `same_as_gold`,
otherwise gold and reject run against the record's database and get an execution verdict
(see verdict.py). Kept pairs are written with their `verdict`; the output appears by rename
when the whole file is done, so an interrupted verify leaves nothing half-written (it is fast
enough to run again from the start: see docs/benchmarks.md).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from prefgen.errors import ConfigError, InputError
from prefgen.execute import connect, database_path, run_query
from prefgen.export import read_pairs
from prefgen.normalize import normalize_sql
from prefgen.verdict import Verdict, judge_execution

SAME_AS_GOLD = "same_as_gold"
GOLD_CACHE = 256


@dataclass(frozen=True)
class VerifyPolicy:
    """How verdicts become keep / drop, and the execution limits."""

    db_root: str
    db_field: str = "db_id"
    equivalence: str = "lenient"
    keep_timeout: bool = True
    keep_unverifiable: bool = True
    time_limit: float = 5.0
    max_rows: int = 100_000


@dataclass
class VerifySummary:
    """Counts by verdict of kept and dropped pairs."""

    kept: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)


class Judge:
    """Judges pairs against their databases, reusing connections and gold results."""

    def __init__(self, policy: VerifyPolicy):
        self.policy = policy
        self.connections: dict[str, object] = {}
        self.golds: dict[tuple[str, str], object] = {}

    def connection(self, db_id: str):
        if db_id not in self.connections:
            path = database_path(self.policy.db_root, db_id)
            self.connections[db_id] = connect(path) if path.is_file() else None
        return self.connections[db_id]

    def __call__(self, db_id: str, gold: str, rejected: str) -> Verdict:
        if normalize_sql(rejected) == normalize_sql(gold):
            return Verdict(SAME_AS_GOLD)
        conn = self.connection(db_id)
        if conn is None:
            return judge_execution(None, gold, rejected)
        key = (db_id, gold)
        if key not in self.golds:
            if len(self.golds) >= GOLD_CACHE:
                self.golds.clear()
            self.golds[key] = run_query(conn, gold, self.policy.time_limit, self.policy.max_rows)
        return judge_execution(conn, gold, rejected, self.golds[key], self.policy.time_limit, self.policy.max_rows)

    def close(self) -> None:
        for conn in self.connections.values():
            if conn is not None:
                conn.close()


def keeps(verdict: Verdict, policy: VerifyPolicy) -> bool:
    return verdict.verdict != SAME_AS_GOLD and verdict.kept(
        policy.equivalence, policy.keep_timeout, policy.keep_unverifiable
    )


def verify_file(pairs: str, output: str, policy: VerifyPolicy) -> VerifySummary:
    """Judge every pair of `pairs`; write the kept ones, with their verdict, to `output`."""
    if not Path(policy.db_root).is_dir():
        raise ConfigError(f"--db-root {policy.db_root} is not a directory")
    target = Path(output)
    temp = target.with_name(target.name + ".verifying")
    summary = VerifySummary()
    judge = Judge(policy)
    try:
        with open(temp, "wb") as handle:
            for number, pair in read_pairs(Path(pairs)):
                verdict = judge(*_fields(pairs, number, pair, policy.db_field))
                if keeps(verdict, policy):
                    summary.kept[verdict.verdict] += 1
                    line = {**pair, "verdict": verdict.verdict, "verdict_detail": verdict.detail}
                    handle.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
                else:
                    summary.dropped[verdict.verdict] += 1
        os.replace(temp, target)
    finally:
        judge.close()
        temp.unlink(missing_ok=True)
    return summary


def _fields(path: str, number: int, pair: object, db_field: str) -> tuple[str, str, str]:
    if not isinstance(pair, dict):
        raise InputError(f"{path}: line {number} is not a JSON object")
    for name in (db_field, "chosen", "rejected"):
        if not isinstance(pair.get(name), str):
            raise InputError(
                f"{path}: line {number}: field {name!r} is missing or not a string",
                hint="--db-field names the field holding the database id" if name == db_field else "",
            )
    return pair[db_field], pair["chosen"], pair["rejected"]


def format_summary(summary: VerifySummary) -> str:
    """A table of kept / dropped pairs by verdict."""
    verdicts = sorted(set(summary.kept) | set(summary.dropped))
    lines = [f"{'verdict':<14} {'kept':>6} {'dropped':>8}"]
    lines += [f"{v:<14} {summary.kept[v]:>6} {summary.dropped[v]:>8}" for v in verdicts]
    lines.append(f"{'total':<14} {sum(summary.kept.values()):>6} {sum(summary.dropped.values()):>8}")
    return "\n".join(lines)
