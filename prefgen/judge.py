"""Step 7 of the flow: decide what becomes of each generated unit.

Statuses: `written` (a line in the JSONL), `duplicate` (same SQL as an earlier kept reject of
the same sample, with --dedup-rejects), `no_sql` (nothing usable in the answer). Units that
could not be generated are `oom` or `error` and are retried by the next run.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefgen.engine import Answer
from prefgen.extract import extract_sql
from prefgen.plan import WorkUnit

WRITTEN = "written"
DUPLICATE = "duplicate"
NO_SQL = "no_sql"
OOM = "oom"
ERROR = "error"
RETRY = "retry"

STATUSES = (WRITTEN, DUPLICATE, NO_SQL, OOM, ERROR, RETRY)
RETRIED_STATUSES = (OOM, ERROR, RETRY)  # a later run generates these units again


@dataclass(frozen=True)
class Judged:
    """A unit, its answer and the verdict on it."""

    unit: WorkUnit
    answer: Answer
    status: str
    sql: str = ""
    detail: str = ""


def judge_batch(units: list[WorkUnit], answers: list[Answer], kept: dict[int, set[str]], dedup: bool) -> list[Judged]:
    """Judge a batch in unit order; `kept` (sample -> kept SQL) is updated with what is kept."""
    results = []
    for unit, answer in zip(units, answers, strict=False):
        if answer.oom:
            results.append(Judged(unit, answer, OOM, detail="did not fit in memory alone"))
            continue
        sql = extract_sql(answer.text)
        seen = kept.setdefault(unit.sample_index, set())
        if not sql:
            status = NO_SQL
        elif dedup and sql in seen:
            status = DUPLICATE
        else:
            status = WRITTEN
            seen.add(sql)
        results.append(Judged(unit, answer, status, sql))
    return results
