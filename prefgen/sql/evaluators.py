"""The two official execution-accuracy rules, as their evaluators compare results.

A pair trains the model towards `chosen` and away from `rejected`; if the benchmark its user
reports would score `chosen` wrong, or `rejected` right, the pair works against that metric.
So each candidate is scored by each evaluator's own rule, and verdict.py combines the scores.

Spider (test-suite accuracy, taoyds/test-suite-sql-eval, `exec_eval.py`, `eval_exec_match`
and `result_eq`, with its default `keep_distinct=False`):
- DISTINCT is removed from both queries before they run (`parse.remove_distinct`: every token
  whose text is `distinct`, COUNT(DISTINCT x) included; here with sqlglot's tokenizer, as
  sqlparse is not a dependency);
- the rows are compared as multisets (bag semantics), in order only when the gold query (without
  DISTINCT) contains `order by` anywhere (`'order by' in g_str.lower()`, not only top-level);
- under column permutations: a permutation of the prediction's columns that makes the results
  equal is searched for (`get_constraint_permutation` prunes by per-column value sets; here every
  row prunes, deterministically, where it samples 20 rows at random: the same permutations remain
  possible, so the answer is the same);
- two empty results are equal; a prediction that fails is wrong. (`postprocess`'s `> =` fix and
  `replace_cur_year` are not applied: SQLite rejects neither spelling differently here.)

BIRD (bird-bench, `evaluation.py`, `execute_sql` / `calculate_ex`):
`set(predicted_res) == set(ground_truth_res)`: rows as sets (order and duplicates ignored),
columns in the order given, so the gold's columns in another order are wrong.
"""

from __future__ import annotations

from collections import Counter
from itertools import product

SPIDER, BIRD = "spider", "bird"


def selected_evaluators(evaluator: str) -> tuple[str, ...]:
    """The evaluators --evaluator `evaluator` (spider, bird or both) selects."""
    return tuple(name for name in (SPIDER, BIRD) if evaluator in (name, "both"))


def remove_distinct(sql: str) -> str:
    """The query without its DISTINCT keywords, as Spider's evaluator runs it."""
    import sqlglot
    from sqlglot.tokens import TokenType

    try:
        tokens = sqlglot.tokenize(sql, read="sqlite")
    except (sqlglot.errors.SqlglotError, RecursionError):
        return sql
    spans = [(t.start, t.end + 1) for t in tokens if t.token_type == TokenType.DISTINCT]
    for start, end in reversed(spans):
        sql = sql[:start] + sql[end:]
    return sql


def spider_order_matters(gold_sql: str) -> bool:
    """Whether Spider compares rows in order: its gold (DISTINCT removed) mentions `order by`."""
    return "order by" in gold_sql.lower()


def _unorder_row(row: tuple) -> tuple:
    return tuple(sorted(row, key=lambda x: str(x) + str(type(x))))


def _permutations(gold: tuple, candidate: tuple, columns: int):
    """Column permutations (gold column i <- candidate column perm[i]) every candidate row allows."""
    gold_sets = [{row[i] for row in gold} for i in range(columns)]
    allowed = [[j for j in range(columns) if all(row[j] in gold_sets[i] for row in candidate)] for i in range(columns)]
    return (perm for perm in product(*allowed) if len(set(perm)) == columns)


def spider_equal(gold: tuple, candidate: tuple, order_matters: bool) -> bool:
    """Spider's `result_eq(gold, prediction, order_matters)`."""
    if not gold and not candidate:
        return True
    if len(gold) != len(candidate):
        return False
    columns = len(gold[0])
    if len(candidate[0]) != columns:
        return False
    unordered_gold = [_unorder_row(row) for row in gold]
    unordered_candidate = [_unorder_row(row) for row in candidate]
    if order_matters and unordered_gold != unordered_candidate:
        return False
    if not order_matters and set(unordered_gold) != set(unordered_candidate):
        return False
    target = list(gold) if order_matters else Counter(gold)
    for perm in _permutations(gold, candidate, columns):
        permuted = [tuple(row[i] for i in perm) for row in candidate]
        if (permuted if order_matters else Counter(permuted)) == target:
            return True
    return False


def bird_equal(gold: tuple, candidate: tuple) -> bool:
    """BIRD's `set(predicted_res) == set(ground_truth_res)`."""
    return set(candidate) == set(gold)


def why_not_bird(gold: tuple, candidate: tuple) -> str:
    """A short reason BIRD scores a candidate wrong, for the verdict's detail."""
    width = len(gold[0]) if gold else len(candidate[0]) if candidate else 0
    if candidate and len(candidate[0]) != width:
        return "another number of columns"
    if width > 1 and {_unorder_row(r) for r in candidate} == {_unorder_row(r) for r in gold}:
        return "columns in another order"
    return "other rows"


def why_not_spider(gold: tuple, candidate: tuple, order_matters: bool) -> str:
    """A short reason Spider scores a candidate wrong (both without DISTINCT), for the detail."""
    if gold and candidate and len(candidate[0]) != len(gold[0]):
        return "another number of columns"
    if Counter(map(_unorder_row, gold)) == Counter(map(_unorder_row, candidate)) and order_matters:
        return "rows in another order"
    if {_unorder_row(r) for r in gold} == {_unorder_row(r) for r in candidate}:
        return "duplicate rows differ"
    return "other rows"
