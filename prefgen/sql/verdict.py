"""Execution verdicts: does a rejected query really answer differently from the gold one?

A reject is only worth training on if some standard evaluator would call it wrong. So the
comparison is the most lenient any of them uses: rows as sets (order and duplicates ignored,
as BIRD does) and columns in any order (as Spider's test-suite allows). The stricter
comparisons (multiset; ordered when the gold has ORDER BY) are recorded too.

Verdicts: `equivalent` (same result: drop), `wrong_result` (keep), `exec_error` (keep, with
SQLite's message), `timeout`, and `unverifiable` (the gold fails, the database is missing, a
result is over the row cap, or the mismatch could come from nondeterminism: the gold has LIMIT
without ORDER BY, or ties at its LIMIT).

A gold that returns no rows is judged as Spider's and BIRD's evaluators judge it: a candidate
that returns rows is `wrong_result`, one that returns none is `equivalent` (detail
`EMPTY_RESULTS`: a correct answer, never a reject, but too weak a proof to be a chosen).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from itertools import permutations

from prefgen.config import DEFAULT_MAX_ROWS, DEFAULT_TIME_LIMIT
from prefgen.sql.execute import Outcome, explain, run_query
from prefgen.units import EMPTY_RESULTS, EQUIVALENT, EXEC_ERROR, TIMEOUT, UNVERIFIABLE, WRONG_RESULT, Verdict

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


def judge_execution(
    conn: sqlite3.Connection | None,
    gold_sql: str,
    candidate_sql: str,
    gold: Outcome | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Verdict:
    """The verdict on `candidate_sql` against `gold_sql` (whose outcome may be passed in)."""
    if conn is None:
        return Verdict(UNVERIFIABLE, "database missing")
    gold = gold or run_query(conn, gold_sql, time_limit, max_rows)
    if not gold.ok:
        return Verdict(UNVERIFIABLE, f"gold fails: {gold.error}")
    same_program = explain(conn, gold_sql)
    if same_program is not None and same_program == explain(conn, candidate_sql):
        return Verdict(EQUIVALENT, "same bytecode")
    candidate = run_query(conn, candidate_sql, time_limit, max_rows)
    if candidate.timeout:
        return Verdict(TIMEOUT, candidate.error)
    if not candidate.ok:
        return Verdict(EXEC_ERROR, candidate.error)
    if not gold.rows:
        if candidate.rows:
            return Verdict(WRONG_RESULT, f"the gold returns no rows, this returns {len(candidate.rows)}")
        return Verdict(EQUIVALENT, EMPTY_RESULTS)
    if gold.truncated or candidate.truncated:
        return Verdict(UNVERIFIABLE, f"a result is over {max_rows} rows")
    ordered, limit = _has_order_by(gold_sql)
    order = _matching_permutation(gold, candidate)
    if order is not None:
        permuted = [tuple(row[i] for i in order) for row in candidate.rows]
        return Verdict(
            EQUIVALENT,
            "same rows",
            multiset_differs=Counter(permuted) != Counter(gold.rows),
            order_differs=ordered and permuted != list(gold.rows),
        )
    if limit is not None and (not ordered or _tie_explains(conn, gold_sql, limit, candidate, time_limit, max_rows)):
        reason = "ties at the gold's LIMIT" if ordered else "the gold has LIMIT without ORDER BY"
        return Verdict(UNVERIFIABLE, f"the difference may be nondeterminism: {reason}")
    return Verdict(WRONG_RESULT)
