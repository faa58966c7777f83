"""`prefgen pair`: on-policy pairs from answers generated elsewhere (vLLM, an API, another tool).

Input: JSON Lines, one line per answer: the record's fields (`instruction`, `input`, `output`
= gold, the database id) plus `answer` (the model's whole answer) and optionally `seed`. The
lines of one record are consecutive. Each answer is judged as `prefgen generate --pairs
onpolicy` judges its candidates, and pairing.py forms the record's pairs. Streamed; the
output appears by rename once every line is done, so a bad line leaves nothing written.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import orjson

from prefgen.config import DB_FIELD_HINT, CheckPolicy, check_pair_modes
from prefgen.errors import ConfigError, InputError
from prefgen.files.atomic import atomic_write
from prefgen.flow.commit import pair_line
from prefgen.flow.extract import extract_sql
from prefgen.flow.judge import candidate_role
from prefgen.flow.pairing import Candidate, SamplePairs, form_pairs
from prefgen.flow.suspects import gold_check
from prefgen.sql.workers import Checker
from prefgen.tools.export import read_pairs
from prefgen.units import CHOSEN, REJECTED, Record

ANSWER_FIELDS = ("answer", "seed")  # a line's own fields; the rest are the record's
NO_SQL = "no_sql"


@dataclass
class PairSummary:
    """What `prefgen pair` judged and formed."""

    records: int = 0
    answers: Counter = field(default_factory=Counter)  # verdict (or no_sql) -> answers
    pairs: int = 0
    with_correct: int = 0
    without_correct: int = 0
    without_wrong: int = 0
    fallbacks: int = 0
    suspects: list[tuple[int, str, str]] = field(default_factory=list)  # (first line, database, why)
    skipped: int = 0  # suspect golds under --gold-suspect skip: no pair


@dataclass
class Group:
    """The consecutive lines of one record."""

    first_line: int
    record: Record
    lines: list[dict]


def _line_fields(path: str, number: int, line: object, db_field: str) -> dict:
    if not isinstance(line, dict):
        raise InputError(f"{path}: line {number} is not a JSON object")
    for name in ("instruction", "output", "answer", db_field):
        if not isinstance(line.get(name), str):
            raise InputError(
                f"{path}: line {number}: field {name!r} is missing or not a string",
                hint=DB_FIELD_HINT if name == db_field else "",
            )
    if line.get("input") is not None and not isinstance(line["input"], str):
        raise InputError(f"{path}: line {number}: field 'input' is not a string")
    if line.get("seed") is not None and not isinstance(line["seed"], int):
        raise InputError(f"{path}: line {number}: field 'seed' is not an integer")
    return line


def _key(line: dict) -> bytes:
    return hashlib.sha256(orjson.dumps([line["instruction"], line.get("input") or "", line["output"]])).digest()


def groups(path: str, db_field: str) -> Iterator[Group]:
    """The records of a candidates file with their answers; a record whose lines are not
    consecutive is an error naming both places."""
    seen: dict[bytes, int] = {}
    group: Group | None = None
    current = b""
    for number, raw in read_pairs(Path(path)):
        line = _line_fields(path, number, raw, db_field)
        key = _key(line)
        if group is not None and key == current:
            group.lines.append(line)
            continue
        if key in seen:
            raise InputError(
                f"{path}: line {number}: its record already had answers at line {seen[key]}",
                hint="put all the answers of one record on consecutive lines",
            )
        if group is not None:
            yield group
        seen[key], current = number, key
        fields = {k: v for k, v in line.items() if k not in ANSWER_FIELDS}
        group = Group(number, Record(index=len(seen) - 1, fields=fields, hash=""), [line])
    if group is not None:
        yield group


def judge_group(checker: Checker, policy: CheckPolicy, group: Group) -> list[Candidate]:
    """Each answer of a record as a candidate, judged by executing it against the gold."""
    db_id, gold = group.record.fields[policy.db_field], group.record.output
    candidates = []
    for attempt, line in enumerate(group.lines):
        sql = extract_sql(line["answer"])
        verdict = checker(db_id, gold, sql) if sql else None
        role = candidate_role(verdict, policy.keeps(verdict)) if verdict else ""
        candidates.append(
            Candidate(
                attempt=attempt,
                role=role,
                sql=sql,
                answer=line["answer"],
                seed=line.get("seed"),
                verdict=verdict.verdict if verdict else NO_SQL,
                detail=verdict.detail if verdict else "",
                spider=verdict.spider if verdict else None,
                bird=verdict.bird if verdict else None,
                digest=verdict.digest if verdict else "",
                variant=verdict.variant if verdict else None,
            )
        )
    return candidates


def pair_file(source: str, output: str, policy: CheckPolicy, num_pairs: int, answer: str, fallback: str) -> PairSummary:
    """Judge every answer of `source` and write the pairs of each record to `output`."""
    check_pair_modes(answer, fallback)
    policy.check()
    if num_pairs < 1:
        raise ConfigError(f"--num-rejects must be at least 1, not {num_pairs}")
    summary = PairSummary()
    checker = Checker(policy)
    try:
        with atomic_write(Path(output), ".pairing") as handle:
            for group in groups(source, policy.db_field):
                candidates = judge_group(checker, policy, group)
                suspect, skip = gold_check([c.row for c in candidates], policy.gold_suspect, policy.suspect_share)
                pairs = [] if skip else form_pairs(candidates, num_pairs, answer, fallback, group.record.output)
                sample = SamplePairs(group.record, pairs, candidates, answer, True, suspect, skip)
                for pair in pairs:
                    handle.write(pair_line(sample, pair))
                _count(summary, sample)
                if suspect:
                    summary.suspects.append((group.first_line, group.record.fields[policy.db_field], suspect))
    finally:
        checker.close()
    return summary


def _count(summary: PairSummary, sample: SamplePairs) -> None:
    summary.records += 1
    summary.answers.update(c.verdict for c in sample.candidates)
    summary.pairs += len(sample.pairs)
    correct = sample.count(CHOSEN) > 0
    summary.with_correct += correct
    summary.without_correct += not correct
    summary.without_wrong += sample.count(REJECTED) == 0
    summary.fallbacks += sample.fallback
    summary.skipped += sample.skipped


def format_pair_summary(summary: PairSummary) -> str:
    """The table `prefgen pair` prints at the end."""
    total = sum(summary.answers.values())
    lines = [f"{'answers by verdict':<28} {total:>7}"]
    lines += [f"  {verdict:<26} {count:>7}" for verdict, count in sorted(summary.answers.items())]
    share = f" ({100 * summary.with_correct / summary.records:.1f}%)" if summary.records else ""
    lines += [
        f"{'records':<28} {summary.records:>7}",
        f"  {'with a correct answer':<26} {summary.with_correct:>7}{share}",
        f"  {'without a correct answer':<26} {summary.without_correct:>7}",
        f"  {'without a wrong answer':<26} {summary.without_wrong:>7}",
        f"  {'paired with the gold':<26} {summary.fallbacks:>7}",
        f"{'pairs written':<28} {summary.pairs:>7}",
    ]
    return "\n".join(lines + suspect_lines(summary.suspects, summary.skipped, "record"))


def suspect_lines(suspects: list[tuple[int, str, str]], skipped: int, what: str, limit: int = 20) -> list[str]:
    """The summary's list of golds worth a second look (suspects.py), by first line."""
    if not suspects:
        return []
    skip = f", {skipped} skipped (no pair)" if skipped else ""
    lines = [f"suspect golds: {len(suspects)} {what}s{skip}; worth a second look:"]
    lines += [f"  line {line} ({db}): {why}" for line, db, why in suspects[:limit]]
    if len(suspects) > limit:
        lines.append(f"  ... and {len(suspects) - limit} more")
    return lines
