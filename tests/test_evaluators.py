"""Evaluator profiles: Spider's and BIRD's own rules (prefgen/sql/evaluators.py), and the verdict
each --evaluator gives, on the shipped Spider database and on cases written for each rule."""

import pytest
from conftest import ROOT

from prefgen.sql.evaluators import bird_equal, remove_distinct, spider_equal, spider_order_matters
from prefgen.sql.execute import connect, database_path
from prefgen.sql.verdict import judge_execution

EN = ROOT / "examples" / "spider_en" / "db"
STORE = "department_store"
G10 = (
    "SELECT T2.product_type_code ,  T2.product_name ,  T2.product_price FROM product_suppliers AS T1 "
    "JOIN products AS T2 ON T1.product_id  =  T2.product_id WHERE T1.supplier_id  =  3"
)
G48 = 'SELECT order_id ,  customer_id FROM customer_orders WHERE order_status_code  =   "Cancelled" ORDER BY order_date'
TYPES = "SELECT product_type_code FROM products LIMIT 3"  # three 'Clothes'


def judged(gold, candidate, evaluator):
    conn = connect(database_path(EN, STORE))
    try:
        return judge_execution(conn, gold, candidate, evaluator=evaluator)
    finally:
        conn.close()


def outcomes(gold, candidate):
    """(spider, bird, both) verdicts, and the two scores (the same whatever the profile)."""
    verdicts = [judged(gold, candidate, e) for e in ("spider", "bird", "both")]
    assert len({(v.spider, v.bird) for v in verdicts}) == 1
    return [v.verdict for v in verdicts], (verdicts[0].spider, verdicts[0].bird), verdicts[2].detail


# --- the published rules, on rows ------------------------------------------------------------


def test_spider_result_eq_as_published():
    gold = ((1, "a"), (2, "b"))
    assert spider_equal(gold, (("b", 2), ("a", 1)), order_matters=False)  # columns permuted, rows reordered
    assert not spider_equal(gold, (("b", 2), ("a", 1)), order_matters=True)
    assert spider_equal(gold, (("a", 1), ("b", 2)), order_matters=True)  # columns permuted, same order
    assert not spider_equal(gold, gold + gold, order_matters=False)  # a multiset: duplicates count
    assert not spider_equal(((1,), (1,), (2,)), ((1,), (2,), (2,)), order_matters=False)
    assert spider_equal((), (), order_matters=True)
    assert not spider_equal(gold, (), order_matters=False)
    assert not spider_equal(((1, 2),), ((1, 2, 3),), order_matters=False)
    # a permutation must map each column onto one with the same values: (1, 1) vs (1, 2) rows
    assert not spider_equal(((1, 2), (2, 1)), ((1, 1), (2, 2)), order_matters=False)


def test_bird_set_equality_as_published():
    gold = ((1, "a"), (2, "b"))
    assert bird_equal(gold, ((2, "b"), (1, "a"), (1, "a")))  # order and duplicates ignored
    assert not bird_equal(gold, (("a", 1), ("b", 2)))  # columns as given
    assert bird_equal((), ())


def test_spider_strips_every_distinct_and_orders_on_any_order_by():
    assert remove_distinct("SELECT DISTINCT count(DISTINCT name) FROM t") == "SELECT  count( name) FROM t"
    assert remove_distinct("SELECT 'distinct' FROM t") == "SELECT 'distinct' FROM t"
    assert spider_order_matters("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3)")  # not only top-level
    assert not spider_order_matters("SELECT a FROM t")


# --- verdicts on the shipped database ----------------------------------------------------------


def test_columns_in_another_order_spider_right_bird_wrong():
    swapped = G10.replace("T2.product_type_code ,  T2.product_name", "T2.product_name, T2.product_type_code")
    verdicts, scores, detail = outcomes(G10, swapped)
    assert scores == (True, False)
    assert verdicts == ["equivalent", "wrong_result", "disputed"]
    assert detail == "bird: wrong (columns in another order); spider: right"


def test_distinct_added_to_a_gold_with_limit():
    """Spider strips DISTINCT from both: the same query, right. BIRD: {Clothes} against
    {Clothes, Hardware}: wrong, but the gold's LIMIT without ORDER BY makes that unverifiable."""
    verdicts, scores, detail = outcomes(TYPES, TYPES.replace("SELECT", "SELECT DISTINCT"))
    assert scores == (True, False)
    assert verdicts == ["equivalent", "unverifiable", "disputed"]
    assert detail == "bird: wrong (other rows); spider: right"


def test_order_by_changed_spider_wrong_bird_right():
    verdicts, scores, detail = outcomes(G48, G48.replace("ORDER BY order_date", "ORDER BY order_date DESC"))
    assert scores == (False, True)
    assert verdicts == ["wrong_result", "equivalent", "disputed"]
    assert detail == "bird: right; spider: wrong (rows in another order)"


def test_duplicated_rows_bird_right_spider_wrong():
    verdicts, scores, detail = outcomes(G10, f"{G10} UNION ALL {G10}")
    assert scores == (False, True)
    assert verdicts == ["wrong_result", "equivalent", "disputed"]
    assert detail == "bird: right; spider: wrong (duplicate rows differ)"


def test_count_distinct_is_stripped_by_spider():
    gold = "SELECT count(DISTINCT product_type_code) FROM products"  # 2
    verdicts, scores, _ = outcomes(gold, "SELECT count(product_type_code) FROM products")  # 15
    assert scores == (True, False) and verdicts == ["equivalent", "wrong_result", "disputed"]


@pytest.mark.parametrize("evaluator", ["spider", "bird", "both", "lenient"])
def test_what_every_profile_agrees_on(evaluator):
    assert judged(G10, G10.replace("=  3", "=  2"), evaluator).verdict == "wrong_result"
    assert judged(G10, "SELECT nope", evaluator).verdict == "exec_error"
    right = judged(G10, G10.replace("=  3", "IN (3)"), evaluator)
    assert (right.verdict, right.spider, right.bird) == ("equivalent", True, True)
    # the same result, however it is written, has the same digest (what gold_suspect compares)
    wrong = judged(G10, G10.replace("=  3", "=  2"), evaluator)
    assert wrong.digest and wrong.digest == judged(G10, G10.replace("=  3", "IN (2)"), evaluator).digest
    assert wrong.digest != right.digest


def test_a_disputed_candidate_is_never_a_reject_nor_a_chosen():
    from prefgen.flow.judge import candidate_role

    swapped = G10.replace("T2.product_type_code ,  T2.product_name", "T2.product_name, T2.product_type_code")
    disputed = judged(G10, swapped, "both")
    for equivalence in ("lenient", "multiset", "ordered"):
        assert not disputed.kept(equivalence)
    assert candidate_role(disputed, disputed.kept()) == "neither"
