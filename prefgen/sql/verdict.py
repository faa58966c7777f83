"""Execution verdicts: does a candidate query answer as the gold one does, for the evaluators
its user reports?

Each executed candidate is scored by Spider's and BIRD's own rules (evaluators.py, with their
sources), and the evaluators selected by --evaluator (spider, bird, or both: the default)
decide its verdict:
- `equivalent` when every selected evaluator scores it right (drop as a reject; a chosen);
- `wrong_result` when every selected one scores it wrong (keep as a reject), unless the
  difference may be nondeterminism (below);
- `disputed` when they disagree (never a reject, never a chosen), its detail naming each
  evaluator's score, e.g. `bird: wrong (columns in another order); spider: right`;
- `exec_error` (keep, with SQLite's message: every evaluator scores a failing query wrong),
  `timeout`, and `unverifiable` (the gold fails, the database is missing, a result is over the
  row cap, an evaluator cannot score it, or the mismatch could come from nondeterminism: the
  gold has LIMIT without ORDER BY, or ties at its LIMIT).
`--equivalence multiset|ordered` still keeps as rejects the `equivalent` ones whose rows differ
from the gold's as multisets / in order (with columns in any order, as before).

The `lenient` rule is the one prefgen used before evaluator profiles, kept for the runs of
ledgers made then (they resume with it): rows as sets and columns in any order, the most
lenient any evaluator uses. Both evaluators' scores are recorded whatever the rule.

A gold that returns no rows is judged as Spider's and BIRD's evaluators judge it: a candidate
that returns rows is `wrong_result`, one that returns none is `equivalent` (detail
`EMPTY_RESULTS`: a correct answer, never a reject, but too weak a proof to be a chosen).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from dataclasses import replace
from itertools import permutations
from typing import Callable

from prefgen.config import DEFAULT_EVALUATOR, DEFAULT_MAX_ROWS, DEFAULT_TIME_LIMIT, LENIENT
from prefgen.sql.evaluators import (
    BIRD,
    SPIDER,
    bird_equal,
    remove_distinct,
    selected_evaluators,
    spider_equal,
    spider_order_matters,
    why_not_bird,
    why_not_spider,
)
from prefgen.sql.execute import Outcome, explain, run_query
from prefgen.units import (
    DISPUTED,
    EMPTY_RESULTS,
    EQUIVALENT,
    EXEC_ERROR,
    GOLD_FAILS,
    TIMEOUT,
    UNVERIFIABLE,
    WRONG_RESULT,
    Verdict,
)

MAX_PERMUTED_COLUMNS = 5  # beyond this, columns are compared in the order given


def _matching_permutation(gold: Outcome, candidate: Outcome) -> tuple[int, ...] | None:
    """A column order under which the candidate's rows, as a set, equal the gold's."""
    if gold.columns != candidate.columns:
        return None
    target = set(gold.rows)
    orders = permutations(range(gold.columns)) if gold.columns <= MAX_PERMUTED_COLUMNS else [range(gold.columns)]
    for order in orders:
        order = tuple(order)
        if {tuple(row[i] for i in order) for row in candidate.rows} == target:
            return order
    return None


def _has_order_by(sql: str) -> tuple[bool, int | None]:
    """(top-level ORDER BY?, top-level LIMIT or None), read with sqlglot."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except (sqlglot.errors.SqlglotError, RecursionError):
        return False, None
    limit = tree.args.get("limit")
    count = None
    if isinstance(limit, exp.Limit) and isinstance(limit.expression, exp.Literal) and limit.expression.is_int:
        count = int(limit.expression.name)
    return tree.args.get("order") is not None, count


def _tie_explains(conn, gold_sql: str, limit: int, candidate: Outcome, time_limit: float, max_rows: int) -> bool:
    """True when ties at the gold's LIMIT could explain the candidate: the gold's ORDER BY keys
    tie across the cut, and the candidate is the rows before the tie group plus rows of it."""
    import sqlglot

    try:
        tree = sqlglot.parse_one(gold_sql, read="sqlite")
        unlimited = tree.copy()
        unlimited.set("limit", None)
        keys = unlimited.copy()
        keys.set("expressions", [ordered.this.copy() for ordered in tree.args["order"].expressions])
        keys.set("distinct", None)
        full = run_query(conn, unlimited.sql(dialect="sqlite"), time_limit, max_rows)
        key_rows = run_query(conn, keys.sql(dialect="sqlite"), time_limit, max_rows)
    except (sqlglot.errors.SqlglotError, KeyError, AttributeError):
        return False
    if not (full.ok and key_rows.ok) or len(full.rows) != len(key_rows.rows) or len(full.rows) <= limit:
        return False
    cut = key_rows.rows[limit - 1]
    if key_rows.rows[limit] != cut:
        return False
    group = [i for i, key in enumerate(key_rows.rows) if key == cut]
    before, tied = set(full.rows[: group[0]]), set(full.rows[group[0] : group[-1] + 1])
    rows = set(candidate.rows)
    # every valid tie-break keeps all the rows before the tie group and fills up from it
    return len(candidate.rows) == limit and before <= rows <= before | tied


def result_digest(rows: tuple) -> str:
    """A short digest of a result's rows as a multiset (columns as given): equal results, equal digests."""
    return hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest()[:16]


def _spider_score(run: Callable, gold_of: Callable, gold_sql: str, sql: str, gold: Outcome, candidate: Outcome):
    """(Spider's score or None, why not): both queries without DISTINCT, run again only when
    removing it changed them."""
    gold_plain, plain = remove_distinct(gold_sql), remove_distinct(sql)
    gold = gold if gold_plain == gold_sql else gold_of(gold_plain)
    candidate = candidate if plain == sql else run(plain)
    if not gold.ok or gold.truncated:
        return None, "its gold without DISTINCT cannot be compared"
    if candidate.timeout or candidate.truncated:
        return None, "it cannot be compared without DISTINCT"
    if not candidate.ok:
        return False, "fails without DISTINCT"
    ordered = spider_order_matters(gold_plain)
    if spider_equal(gold.rows, candidate.rows, ordered):
        return True, ""
    return False, why_not_spider(gold.rows, candidate.rows, ordered)


def _nondeterminism(conn, gold_sql: str, candidate: Outcome, time_limit: float, max_rows: int) -> str:
    """Why a mismatch may come from nondeterminism (the gold's LIMIT), or ''."""
    ordered, limit = _has_order_by(gold_sql)
    if limit is not None and (not ordered or _tie_explains(conn, gold_sql, limit, candidate, time_limit, max_rows)):
        reason = "ties at the gold's LIMIT" if ordered else "the gold has LIMIT without ORDER BY"
        return f"the difference may be nondeterminism: {reason}"
    return ""


def _same_rows(gold_sql: str, gold: Outcome, candidate: Outcome, detail: str) -> Verdict:
    """An `equivalent` verdict, with the stricter comparisons that --equivalence reads."""
    ordered, _ = _has_order_by(gold_sql)
    order = _matching_permutation(gold, candidate)
    if order is None:  # equal for the evaluators but not as sets under any column order (DISTINCT stripped)
        return Verdict(EQUIVALENT, detail, multiset_differs=True)
    permuted = [tuple(row[i] for i in order) for row in candidate.rows]
    return Verdict(
        EQUIVALENT,
        detail,
        multiset_differs=Counter(permuted) != Counter(gold.rows),
        order_differs=ordered and permuted != list(gold.rows),
    )


def _lenient(conn, gold_sql: str, gold: Outcome, candidate: Outcome, time_limit: float, max_rows: int) -> Verdict:
    """The verdict under the lenient rule (ledgers made before evaluator profiles)."""
    if not gold.rows:
        if candidate.rows:
            return Verdict(WRONG_RESULT, f"the gold returns no rows, this returns {len(candidate.rows)}")
        return Verdict(EQUIVALENT, EMPTY_RESULTS)
    if gold.truncated or candidate.truncated:
        return Verdict(UNVERIFIABLE, f"a result is over {max_rows} rows")
    if _matching_permutation(gold, candidate) is not None:
        return _same_rows(gold_sql, gold, candidate, "same rows")
    reason = _nondeterminism(conn, gold_sql, candidate, time_limit, max_rows)
    return Verdict(UNVERIFIABLE, reason) if reason else Verdict(WRONG_RESULT)


def _profiled(conn, gold_sql: str, gold: Outcome, candidate: Outcome, scores: dict, limits: tuple) -> Verdict:
    """The verdict of the selected evaluators' scores (`scores`: name -> (score, why not))."""
    if gold.truncated or candidate.truncated:
        return Verdict(UNVERIFIABLE, f"a result is over {limits[1]} rows")
    unscored = [f"{name}: {why}" for name, (score, why) in sorted(scores.items()) if score is None]
    if unscored:
        return Verdict(UNVERIFIABLE, "; ".join(unscored))
    if all(score for score, _ in scores.values()):
        return _same_rows(gold_sql, gold, candidate, "same rows" if gold.rows else EMPTY_RESULTS)
    if any(score for score, _ in scores.values()):
        detail = "; ".join(
            f"{name}: right" if score else f"{name}: wrong ({why})" for name, (score, why) in sorted(scores.items())
        )
        return Verdict(DISPUTED, detail)
    if not gold.rows:
        return Verdict(WRONG_RESULT, f"the gold returns no rows, this returns {len(candidate.rows)}")
    reason = _nondeterminism(conn, gold_sql, candidate, *limits)
    return Verdict(UNVERIFIABLE, reason) if reason else Verdict(WRONG_RESULT)


def judge_execution(
    conn: sqlite3.Connection | None,
    gold_sql: str,
    candidate_sql: str,
    gold: Outcome | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
    max_rows: int = DEFAULT_MAX_ROWS,
    evaluator: str = DEFAULT_EVALUATOR,
    gold_of: Callable[[str], Outcome] | None = None,
) -> Verdict:
    """The verdict on `candidate_sql` against `gold_sql` (whose outcome may be passed in) under
    --evaluator `evaluator` (or the legacy `lenient` rule); `gold_of` runs a gold query (a
    cache may answer: Spider's rule runs the gold again without DISTINCT)."""
    if conn is None:
        return Verdict(UNVERIFIABLE, "database missing")

    def run(sql: str) -> Outcome:
        return run_query(conn, sql, time_limit, max_rows)

    gold_of = gold_of or run
    gold = gold or gold_of(gold_sql)
    if not gold.ok:
        return Verdict(UNVERIFIABLE, f"{GOLD_FAILS}: {gold.error}")
    same_program = explain(conn, gold_sql)
    if same_program is not None and same_program == explain(conn, candidate_sql):
        return Verdict(EQUIVALENT, "same bytecode", spider=True, bird=True)
    candidate = run(candidate_sql)
    if candidate.timeout:
        return Verdict(TIMEOUT, candidate.error)
    if not candidate.ok:
        return Verdict(EXEC_ERROR, candidate.error, spider=False, bird=False)
    bird = (True, "") if bird_equal(gold.rows, candidate.rows) else (False, why_not_bird(gold.rows, candidate.rows))
    scores = {SPIDER: _spider_score(run, gold_of, gold_sql, candidate_sql, gold, candidate), BIRD: bird}
    if gold.truncated or candidate.truncated:
        scores = {name: (None, "") for name in scores}
    if evaluator == LENIENT:
        verdict = _lenient(conn, gold_sql, gold, candidate, time_limit, max_rows)
    else:
        selected = {name: scores[name] for name in selected_evaluators(evaluator)}
        verdict = _profiled(conn, gold_sql, gold, candidate, selected, (time_limit, max_rows))
    digest = "" if candidate.truncated else result_digest(candidate.rows)
    return replace(verdict, spider=scores[SPIDER][0], bird=scores[BIRD][0], digest=digest)
