"""The data every step of the flow passes on: records, work units, answers, verdicts, judged
units, and the names of their statuses and roles. A leaf: it imports nothing of prefgen, so
any step may use these types without importing a later step.

read records -> plan (WorkUnit) -> generate (Answer) -> judge (Judged, Verdict) -> commit
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One SFT record: its position in the file, its fields and a hash of its content."""

    index: int
    fields: dict
    hash: str

    @property
    def instruction(self) -> str:
        return self.fields["instruction"]

    @property
    def input(self) -> str:
        return self.fields.get("input") or ""

    @property
    def output(self) -> str:
        return self.fields["output"]


@dataclass(frozen=True)
class WorkUnit:
    """One reject to generate for one record."""

    record: Record
    reject_index: int
    seed: int

    @property
    def sample_index(self) -> int:
        return self.record.index

    @property
    def key(self) -> tuple[int, int]:
        return (self.record.index, self.reject_index)


@dataclass(frozen=True)
class Answer:
    """What the model produced for one unit."""

    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    oom: bool = False  # the unit did not fit in memory even alone
    too_long: bool = False  # the prompt does not fit the engine's context
    source: str = "generated"  # or "reused": taken from an earlier run's ledger (--reuse-answers)


# Execution verdicts (sql/verdict.py decides them)
EQUIVALENT = "equivalent"
WRONG_RESULT = "wrong_result"
EXEC_ERROR = "exec_error"
TIMEOUT = "timeout"
UNVERIFIABLE = "unverifiable"
DISPUTED = "disputed"  # the selected evaluators disagree: never a reject, never a chosen
EMPTY_RESULTS = "both return no rows"
GOLD_FAILS = "gold fails"  # the detail of an `unverifiable` verdict whose gold query fails


@dataclass(frozen=True)
class Verdict:
    """The verdict on one reject, with the stricter comparisons for equivalent ones, each
    evaluator's score (True right, False wrong, None not scored) and a digest of its result."""

    verdict: str
    detail: str = ""
    multiset_differs: bool = False
    order_differs: bool = False
    spider: bool | None = None
    bird: bool | None = None
    digest: str = ""  # the candidate's result rows (sorted), to compare answers with each other
    variant: int | None = None  # --db-variants: the variant (1..K) that told a wrong answer apart

    def kept(self, equivalence: str = "lenient", keep_timeout: bool = True, keep_unverifiable: bool = True) -> bool:
        """Whether the pair stays, under a policy."""
        if self.verdict in (WRONG_RESULT, EXEC_ERROR):
            return True
        if self.verdict == TIMEOUT:
            return keep_timeout
        if self.verdict == UNVERIFIABLE:
            return keep_unverifiable
        if self.verdict == DISPUTED:
            return False
        return (equivalence == "multiset" and self.multiset_differs) or (
            equivalence == "ordered" and (self.multiset_differs or self.order_differs)
        )


# What became of a unit (the ledger's units.status). judge.py says when each applies.
WRITTEN = "written"
SAME_AS_GOLD = "same_as_gold"
DUPLICATE = "duplicate"
NO_SQL = "no_sql"
DROPPED = "dropped"
OOM = "oom"
ERROR = "error"
RETRY = "retry"
TOO_LONG = "too_long"
CANDIDATE = "candidate"  # --pairs onpolicy: a judged answer, with a role
GOLD_SUSPECT = "gold_suspect"  # --gold-suspect skip: a reject not written, its sample's gold is suspect

CANDIDATE_STATUSES = (WRITTEN, DROPPED, CANDIDATE, GOLD_SUSPECT)  # answers that later ones are deduplicated against
CHOSEN, REJECTED, NEITHER = "chosen", "rejected", "neither"  # a candidate's roles
RETRIED_STATUSES = (OOM, ERROR, RETRY)  # a later run generates these units again


@dataclass(frozen=True)
class Judged:
    """A unit, its answer and the verdict on it."""

    unit: WorkUnit
    answer: Answer
    status: str
    sql: str = ""
    detail: str = ""
    verdict: Verdict | None = None  # the execution verdict, with --db-root
    role: str | None = None  # --pairs onpolicy: chosen, rejected or neither
    suspect: str | None = None  # gold mode, checked: why its sample's gold is suspect, "" if not (suspects.py)
