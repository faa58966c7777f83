"""`prefgen verify`: judge an existing preference file by executing its SQL.

Streams the pairs; for each, a reject that is the gold query up to layout is `same_as_gold`,
otherwise gold and reject run against the record's database and get an execution verdict
(see verdict.py). Kept pairs are written with their `verdict`; the output appears by rename
when the whole file is done, so an interrupted verify leaves nothing half-written (it is fast
enough to run again from the start: see docs/benchmarks.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from prefgen.config import CheckPolicy
from prefgen.errors import InputError
from prefgen.files.atomic import atomic_write
from prefgen.files.export import read_pairs
from prefgen.sql.normalize import normalize_sql
from prefgen.sql.workers import Checker
from prefgen.units import SAME_AS_GOLD, Verdict


@dataclass
class VerifySummary:
    """Counts by verdict of kept and dropped pairs."""

    kept: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)


def judge_pair(checker: Checker, db_id: str, gold: str, rejected: str) -> Verdict:
    """`same_as_gold` when the reject is the gold up to layout, else the execution verdict."""
    if normalize_sql(rejected) == normalize_sql(gold):
        return Verdict(SAME_AS_GOLD)
    return checker(db_id, gold, rejected)


def verify_file(pairs: str, output: str, policy: CheckPolicy) -> VerifySummary:
    """Judge every pair of `pairs`; write the kept ones, with their verdict, to `output`."""
    policy.check()
    summary = VerifySummary()
    checker = Checker(policy)
    try:
        with atomic_write(Path(output), ".verifying") as handle:
            for number, pair in read_pairs(Path(pairs)):
                verdict = judge_pair(checker, *_fields(pairs, number, pair, policy.db_field))
                if verdict.verdict != SAME_AS_GOLD and policy.keeps(verdict):
                    summary.kept[verdict.verdict] += 1
                    line = {**pair, "verdict": verdict.verdict, "verdict_detail": verdict.detail}
                    line.update(spider_correct=verdict.spider, bird_correct=verdict.bird)
                    handle.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
                else:
                    summary.dropped[verdict.verdict] += 1
    finally:
        checker.close()
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
