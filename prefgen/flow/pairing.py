"""Step 7b of the flow (`--pairs onpolicy`): turn a sample's judged candidates into pairs.

Both sides of an on-policy pair are the model's own answers, judged only by execution
against the gold: a candidate whose result equals the gold's (under --equivalence) may be
`chosen`, one that answers wrongly or fails may be `rejected`.

The pairing rule, a pure function of the sample's candidates (so a resumed run forms the
same pairs as an uninterrupted one):
1. rejected side: distinct rejected answers first (by normalized SQL), `wrong_result` before
   `exec_error` (a query that runs but answers wrongly teaches more than a syntax error),
   then by attempt; after them the repeated ones, in the same order;
2. chosen side: the distinct chosen answers by attempt, in a fixed rotation: pair i takes
   chosen i mod (number of chosen);
3. up to --num-rejects pairs; a pair whose two sides have the same SQL (after normalization)
   is skipped, and so is one that repeats an earlier pair (the same SQL on both sides, or with
   --answer full the same texts);
4. no chosen answer: with --fallback gold (and --answer sql) the gold is the chosen side of
   every pair, otherwise the sample yields no pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefgen.sql.normalize import normalize_sql
from prefgen.units import CHOSEN, REJECTED, WRONG_RESULT, Record

MODEL, GOLD = "model", "gold"  # where a pair's chosen side came from


@dataclass(frozen=True)
class Candidate:
    """One judged answer of a sample (an attempt of generate, or a line of `prefgen pair`)."""

    attempt: int
    role: str
    sql: str
    answer: str = ""  # the whole answer as generated
    seed: int | None = None
    verdict: str | None = None
    detail: str = ""
    spider: bool | None = None  # Spider's and BIRD's scores (None: not scored)
    bird: bool | None = None
    digest: str = ""  # its result rows' digest (sql/verdict.py), for the gold check (suspects.py)
    variant: int | None = None  # the database variant that told it apart from the gold, if one did

    @property
    def row(self) -> dict:
        """What the gold check (suspects.py) reads of it, as a ledger row has it."""
        return {
            "verdict": self.verdict,
            "verdict_detail": self.detail,
            "result_digest": self.digest,
            "variant": self.variant,
        }

    @property
    def scores(self) -> dict:
        """Each evaluator's score, as the pair lines carry them."""
        return {"spider": self.spider, "bird": self.bird}

    def text(self, mode: str) -> str:
        """What goes into the pair: the extracted SQL or the whole answer."""
        return self.answer if mode == "full" else self.sql


@dataclass(frozen=True)
class Pair:
    """One on-policy pair; `chosen` is None when the gold is the chosen side (--fallback gold)."""

    index: int
    chosen: Candidate | None
    rejected: Candidate


def _rejected_order(candidates: list[Candidate]) -> list[Candidate]:
    rejected = sorted(
        (c for c in candidates if c.role == REJECTED),
        key=lambda c: (c.verdict != WRONG_RESULT, c.attempt),
    )
    seen: set[str] = set()
    distinct, repeated = [], []
    for candidate in rejected:
        key = normalize_sql(candidate.sql)
        (repeated if key in seen else distinct).append(candidate)
        seen.add(key)
    return distinct + repeated


def _distinct_chosen(candidates: list[Candidate], mode: str) -> list[Candidate]:
    chosen, seen = [], set()
    for candidate in sorted((c for c in candidates if c.role == CHOSEN), key=lambda c: c.attempt):
        if candidate.text(mode) not in seen:
            seen.add(candidate.text(mode))
            chosen.append(candidate)
    return chosen


def form_pairs(
    candidates: list[Candidate], num_pairs: int, answer: str = "sql", fallback: str = "none", gold_sql: str = ""
) -> list[Pair]:
    """The sample's pairs under the rule in this module's docstring."""
    chosen = _distinct_chosen(candidates, answer)
    use_gold = not chosen and fallback == "gold" and answer == "sql"
    if not chosen and not use_gold:
        return []
    pairs: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for rejected in _rejected_order(candidates):
        if len(pairs) == num_pairs:
            break
        side = None if use_gold else chosen[len(pairs) % len(chosen)]
        chosen_sql = normalize_sql(gold_sql if side is None else side.sql)
        rejected_sql = normalize_sql(rejected.sql)
        # what makes two pairs the same: their SQL, or with --answer full their whole texts
        key = (chosen_sql, rejected_sql) if answer == "sql" else (side and side.answer, rejected.answer)
        if chosen_sql == rejected_sql or key in seen:
            continue
        seen.add(key)
        pairs.append(Pair(len(pairs), side, rejected))
    return pairs


def model_pairs(candidates: list[Candidate], num_pairs: int) -> int:
    """How many pairs the model's own answers already form (what --max-attempts waits for)."""
    return len(form_pairs(candidates, num_pairs))


def pair_fields(pair: Pair, gold_sql: str, answer: str, scored: bool = False) -> dict:
    """The pair's `chosen` / `rejected` and where each side came from; `scored`: with each side's
    evaluator scores (runs made before evaluator profiles have lines without them)."""
    chosen, rejected = pair.chosen, pair.rejected
    fields = {
        "chosen": gold_sql if chosen is None else chosen.text(answer),
        "rejected": rejected.text(answer),
        "chosen_source": GOLD if chosen is None else MODEL,
        "pair_index": pair.index,
        "chosen_attempt": None if chosen is None else chosen.attempt,
        "chosen_seed": None if chosen is None else chosen.seed,
        "chosen_verdict": None if chosen is None else chosen.verdict,
        "rejected_attempt": rejected.attempt,
        "rejected_seed": rejected.seed,
        "rejected_verdict": rejected.verdict,
        "rejected_detail": rejected.detail,
    }
    if scored:
        fields.update(chosen_scores=None if chosen is None else chosen.scores, rejected_scores=rejected.scores)
    return fields


def candidate_from_row(row: dict) -> Candidate:
    """A candidate from a unit's ledger row (units that are not candidates have no role)."""
    return Candidate(
        attempt=row["reject_index"],
        role=row.get("role") or "",
        sql=row.get("sql") or "",
        answer=row.get("raw_answer") or "",
        seed=row.get("seed"),
        verdict=row.get("verdict"),
        detail=row.get("verdict_detail") or "",
        spider=_score(row.get("spider_correct")),
        bird=_score(row.get("bird_correct")),
    )


def _score(value: int | None) -> bool | None:
    return None if value is None else bool(value)


@dataclass(frozen=True)
class SamplePairs:
    """A sample whose candidates are all judged, and the pairs they form."""

    record: Record
    pairs: list[Pair]
    candidates: list[Candidate]
    answer: str = "sql"
    scored: bool = False  # the lines carry each side's evaluator scores (not with the lenient rule)
    suspect: str | None = None  # why its gold is suspect, "" if not, None when golds are not checked
    skipped: bool = False  # suspect under --gold-suspect skip: no pair

    @property
    def fallback(self) -> bool:
        return any(p.chosen is None for p in self.pairs)

    def count(self, role: str) -> int:
        return sum(c.role == role for c in self.candidates)
