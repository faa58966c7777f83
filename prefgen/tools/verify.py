"""`prefgen verify`: judge an existing preference file by executing its SQL.

Streams the pairs; for each, a reject that is the gold query up to layout is `same_as_gold`,
otherwise gold and reject run against the record's database and get an execution verdict
(see verdict.py). Consecutive pairs of one record (the same question, database and chosen
gold) are a sample: its gold is checked on its rejects (suspects.py) and, under --gold-suspect
skip, a suspect sample's pairs are dropped. Kept pairs are written with their `verdict` (and
`gold_suspect`); the output appears by rename when the whole file is done, so an interrupted
verify leaves nothing half-written (it is fast enough to run again from the start: see
docs/benchmarks.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import orjson

from prefgen.config import DB_FIELD_HINT, CheckPolicy
from prefgen.errors import InputError
from prefgen.files.atomic import atomic_write
from prefgen.flow.commit import suspect_fields
from prefgen.flow.suspects import gold_check
from prefgen.sql.normalize import normalize_sql
from prefgen.sql.workers import Checker
from prefgen.tools.export import read_pairs
from prefgen.tools.pair import suspect_lines
from prefgen.units import GOLD_SUSPECT, SAME_AS_GOLD, Verdict


@dataclass
class VerifySummary:
    """Counts by verdict of kept and dropped pairs, and the suspect golds (first line, database, why)."""

    kept: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    suspects: list[tuple[int, str, str]] = field(default_factory=list)
    skipped: int = 0  # samples whose pairs --gold-suspect skip dropped


def judge_pair(checker: Checker, db_id: str, gold: str, rejected: str) -> Verdict:
    """`same_as_gold` when the reject is the gold up to layout, else the execution verdict."""
    if normalize_sql(rejected) == normalize_sql(gold):
        return Verdict(SAME_AS_GOLD)
    return checker(db_id, gold, rejected)


def samples(path: str, db_field: str) -> Iterator[list[tuple[int, dict, tuple[str, str, str]]]]:
    """The pairs of a file, streamed, as runs of consecutive lines of one record."""
    run, current = [], None
    for number, pair in read_pairs(Path(path)):
        fields = _fields(path, number, pair, db_field)
        key = (fields[0], fields[1], pair.get("instruction"), pair.get("input"))
        if run and key != current:
            yield run
            run = []
        run.append((number, pair, fields))
        current = key
    if run:
        yield run


def verify_file(pairs: str, output: str, policy: CheckPolicy) -> VerifySummary:
    """Judge every pair of `pairs`; write the kept ones, with their verdict, to `output`."""
    policy.check()
    summary = VerifySummary()
    checker = Checker(policy)
    try:
        with atomic_write(Path(output), ".verifying") as handle:
            for sample in samples(pairs, policy.db_field):
                verdicts = [judge_pair(checker, *fields) for _, _, fields in sample]
                rows = [
                    {
                        "status": v.verdict,
                        "verdict": v.verdict,
                        "verdict_detail": v.detail,
                        "result_digest": v.digest,
                        "variant": v.variant,
                    }
                    for v in verdicts
                ]
                suspect, skip = gold_check(rows, policy.gold_suspect, policy.suspect_share)
                if suspect:
                    summary.suspects.append((sample[0][0], sample[0][2][0], suspect))
                    summary.skipped += skip
                for (_, pair, _), verdict in zip(sample, verdicts, strict=True):
                    if verdict.verdict != SAME_AS_GOLD and policy.keeps(verdict) and not skip:
                        summary.kept[verdict.verdict] += 1
                        line = {**pair, "verdict": verdict.verdict, "verdict_detail": verdict.detail}
                        line.update(spider_correct=verdict.spider, bird_correct=verdict.bird)
                        line.update(suspect_fields(suspect))
                        handle.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
                    else:
                        summary.dropped[GOLD_SUSPECT if skip else verdict.verdict] += 1
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
                hint=DB_FIELD_HINT if name == db_field else "",
            )
    return pair[db_field], pair["chosen"], pair["rejected"]


def format_summary(summary: VerifySummary) -> str:
    """A table of kept / dropped pairs by verdict."""
    verdicts = sorted(set(summary.kept) | set(summary.dropped))
    lines = [f"{'verdict':<14} {'kept':>6} {'dropped':>8}"]
    lines += [f"{v:<14} {summary.kept[v]:>6} {summary.dropped[v]:>8}" for v in verdicts]
    lines.append(f"{'total':<14} {sum(summary.kept.values()):>6} {sum(summary.dropped.values()):>8}")
    return "\n".join(lines + suspect_lines(summary.suspects, summary.skipped, "sample"))
