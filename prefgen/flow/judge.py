"""Step 7 of the flow: decide what becomes of each generated unit.

Statuses: `written` (a line in the JSONL), `same_as_gold` (the gold query, up to layout),
`duplicate` (same SQL as an earlier kept reject of the same sample, with --dedup-rejects),
`no_sql` (nothing usable in the answer), and with --db-root `dropped` (the execution verdict
says no evaluator would call it wrong: see sql/verdict.py). Units that could not be
generated are `oom` or `error` and are retried by the next run; a prompt longer than the
engine's context is `too_long` (it would not fit next time either).

With `--pairs onpolicy` a unit is not a line of its own but a `candidate`: every answer with
SQL is executed (the gold query again is a correct answer, not a same_as_gold), and its
verdict gives it a role: `chosen` (correct), `rejected` (wrong, or failing) or `neither`.
pairing.py forms the sample's pairs once all its candidates are judged.

Duplicates are judged against the earlier candidates of the sample (written or dropped):
the same SQL gets the same verdict, so it is not executed twice.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable

from prefgen.flow.extract import extract_sql
from prefgen.sql.normalize import dedup_key, normalize_sql
from prefgen.units import (
    CANDIDATE,
    CHOSEN,
    DROPPED,
    DUPLICATE,
    EMPTY_RESULTS,
    EQUIVALENT,
    NEITHER,
    NO_SQL,
    OOM,
    REJECTED,
    SAME_AS_GOLD,
    TOO_LONG,
    WRITTEN,
    Answer,
    Judged,
    Verdict,
    WorkUnit,
)


def candidate_role(verdict: Verdict, kept_as_reject: bool) -> str:
    """What a judged candidate can be in an on-policy pair, given whether the policy keeps it
    as a reject. A correct answer is never a reject; it is a chosen unless both it and the
    gold return no rows (an empty result proves little)."""
    if kept_as_reject:
        return REJECTED
    if verdict.verdict == EQUIVALENT and verdict.detail != EMPTY_RESULTS:
        return CHOSEN
    return NEITHER


def with_verdict(item: Judged, verdict: Verdict, keep: bool) -> Judged:
    """A judged answer with its execution verdict: a reject written or dropped, or a candidate
    with its role."""
    if item.status == CANDIDATE:
        return replace(item, verdict=verdict, detail=verdict.detail, role=candidate_role(verdict, keep))
    return replace(item, status=WRITTEN if keep else DROPPED, verdict=verdict, detail=verdict.detail)


class DedupIndex:
    """Per sample, the dedup keys (--dedup-rejects) of its candidates so far: the judge's memory
    of what a sample already has, filled from the ledger at start-up and by each judged batch."""

    def __init__(self, mode: str = ""):
        self.mode = mode  # "" (off), "exact" or "sql"
        self.keys: dict[int, set[str]] = {}

    def remember(self, sample: int, sqls: Iterable[str]) -> None:
        """Record candidates a sample already has (its ledger rows, at start-up)."""
        keys = {dedup_key(sql, self.mode) for sql in sqls}
        if keys:
            self.keys[sample] = keys

    def duplicate(self, sample: int, sql: str) -> bool:
        """Whether `sql` repeats an earlier candidate of the sample (only with --dedup-rejects)."""
        return bool(self.mode) and dedup_key(sql, self.mode) in self.keys.get(sample, ())

    def add(self, sample: int, sql: str) -> None:
        self.keys.setdefault(sample, set()).add(dedup_key(sql, self.mode))

    def forget(self, keep: Callable[[int], bool]) -> None:
        """Drop the samples `keep` says are done with (keeps memory bounded on any input)."""
        for sample in [s for s in self.keys if not keep(s)]:
            del self.keys[sample]


def judge_batch(
    units: list[WorkUnit], answers: list[Answer], index: DedupIndex, onpolicy: bool = False
) -> list[Judged]:
    """Judge a batch in unit order, updating the dedup index. With `onpolicy`, answers with SQL
    are candidates, to be executed."""
    results = []
    for unit, answer in zip(units, answers, strict=True):
        if answer.oom:
            results.append(Judged(unit, answer, OOM, detail="did not fit in memory alone"))
            continue
        if answer.too_long:
            detail = f"the prompt's {answer.prompt_tokens} tokens do not fit the engine's context"
            results.append(Judged(unit, answer, TOO_LONG, detail=detail))
            continue
        sql = extract_sql(answer.text)
        if not sql:
            status = NO_SQL
        elif not onpolicy and normalize_sql(sql) == normalize_sql(unit.record.output):
            status = SAME_AS_GOLD
        elif index.duplicate(unit.sample_index, sql):
            status = DUPLICATE
        else:
            status = CANDIDATE if onpolicy else WRITTEN
            index.add(unit.sample_index, sql)
        results.append(Judged(unit, answer, status, sql))
    return results
