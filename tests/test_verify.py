"""Execution verdicts on real Spider databases, safe execution, and `prefgen verify`."""

import hashlib
import shutil
import sys

import orjson
import pytest
from conftest import ROOT, read_jsonl, run_cli

from prefgen.sql.execute import connect, database_path, run_query
from prefgen.sql.verdict import judge_execution
from prefgen.units import EMPTY_RESULTS

EN = ROOT / "examples" / "spider_en" / "db"
DE = ROOT / "examples" / "spider_de" / "db"
STORE = "department_store"
G10 = (
    "SELECT T2.product_type_code ,  T2.product_name ,  T2.product_price FROM product_suppliers AS T1 "
    "JOIN products AS T2 ON T1.product_id  =  T2.product_id WHERE T1.supplier_id  =  3"
)
G44 = (
    "SELECT DISTINCT T1.customer_name FROM customers AS T1 JOIN customer_orders AS T2 ON T1.customer_id  =  "
    "T2.customer_id JOIN order_items AS T3 ON T2.order_id  =  T3.order_id JOIN products AS T4 ON T3.product_id  "
    '=  T4.product_id WHERE T4.product_name  =  "keyboard"'
)
G48 = 'SELECT order_id ,  customer_id FROM customer_orders WHERE order_status_code  =   "Cancelled" ORDER BY order_date'


def verdict(gold, candidate, db=STORE, root=EN, **limits):
    path = database_path(root, db)
    conn = connect(path) if path.exists() else None
    return judge_execution(conn, gold, candidate, **limits)


def test_columns_in_another_order_are_equivalent():
    """For the lenient rule and Spider's; BIRD compares columns as given, so with both (the
    default) the evaluators disagree (tests/test_evaluators.py)."""
    candidate = G10.replace("T2.product_type_code ,  T2.product_name", "T2.product_name, T2.product_type_code")
    assert verdict(G10, candidate, evaluator="lenient").verdict == "equivalent"
    assert verdict(G10, candidate, evaluator="spider").verdict == "equivalent"
    assert verdict(G10, candidate).verdict == "disputed"


def test_a_wrong_filter_is_a_wrong_result():
    assert verdict(G10, G10.replace("supplier_id  =  3", "supplier_id  =  2")).verdict == "wrong_result"


def test_dropping_distinct_is_equivalent_but_the_multiset_comparison_sees_it():
    result = verdict(G44, G44.replace("DISTINCT ", ""))
    assert result.verdict == "equivalent" and result.multiset_differs
    assert not result.kept("lenient") and result.kept("multiset")


def test_another_order_is_equivalent_unless_ordered_comparison():
    """Under the lenient rule and BIRD's; Spider compares in order when the gold has ORDER BY, so
    with both (the default) the evaluators disagree: never a reject, whatever --equivalence."""
    candidate = G48.replace(" ORDER BY order_date", " ORDER BY order_date DESC")
    for evaluator in ("lenient", "bird"):
        result = verdict(G48, candidate, evaluator=evaluator)
        assert result.verdict == "equivalent" and result.order_differs and not result.multiset_differs
        assert result.kept("ordered") and not result.kept("multiset")
    disputed = verdict(G48, candidate)
    assert disputed.verdict == "disputed" and not disputed.kept("ordered")


def test_identical_bytecode_needs_no_run():
    result = verdict(G10, G10.lower().replace("  ", " "))
    assert (result.verdict, result.detail) == ("equivalent", "same bytecode")


@pytest.mark.parametrize(
    "gold, db, reason",
    [
        ("SELECT name , land , alter FROM sänger ORDER BY alter DESC", "concert_singer", 'gold fails: near "alter"'),
        ("SELECT 1", "no_such_db", "database missing"),
    ],
)
def test_unverifiable_golds(gold, db, reason):
    result = verdict(gold, "SELECT 2", db=db, root=DE)
    assert result.verdict == "unverifiable" and result.detail.startswith(reason)


EMPTY_GOLD = "SELECT turniername FROM spiele GROUP BY turniername HAVING count(*) > 10"  # no rows


def test_against_a_gold_without_rows_a_candidate_with_rows_is_wrong_and_one_without_is_equivalent():
    wrong = verdict(EMPTY_GOLD, "SELECT 1", db="wta_1", root=DE)
    assert wrong.verdict == "wrong_result" and "the gold returns no rows" in wrong.detail
    empty = verdict(EMPTY_GOLD, "SELECT turniername FROM spiele WHERE 0", db="wta_1", root=DE)
    assert (empty.verdict, empty.detail) == ("equivalent", EMPTY_RESULTS)
    assert not empty.kept("lenient") and not empty.kept("multiset") and not empty.kept("ordered")
    failing = verdict(EMPTY_GOLD, "SELECT nope FROM spiele", db="wta_1", root=DE)
    assert failing.verdict == "exec_error"


def test_limit_without_order_by_is_unverifiable():
    result = verdict("SELECT staff_name FROM staff LIMIT 2", "SELECT staff_name FROM staff ORDER BY staff_name LIMIT 2")
    assert result.verdict == "unverifiable" and "LIMIT without ORDER BY" in result.detail


def test_ties_at_the_limit_are_unverifiable_only_when_they_explain_the_difference():
    gold = "SELECT staff_name FROM staff ORDER BY staff_gender LIMIT 2"  # one '0', then a tie of '1's
    tie = verdict(gold, "SELECT staff_name FROM staff WHERE staff_name IN ('Maximus', 'Vanessa')")
    assert tie.verdict == "unverifiable" and "ties" in tie.detail
    assert verdict(gold, "SELECT staff_name FROM staff ORDER BY staff_gender DESC LIMIT 2").verdict == "wrong_result"


HOSTILE = [
    "DROP TABLE staff",
    "DELETE FROM staff",
    "UPDATE staff SET staff_name = 'x'",
    "CREATE TABLE evil (x)",
    "ATTACH DATABASE 'evil.db' AS evil",
    "PRAGMA writable_schema = 1",
    "SELECT load_extension('evil')",
    "SELECT 1; DROP TABLE staff",
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_sql_is_refused_and_the_database_is_unchanged(sql, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = database_path(EN, STORE)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = verdict(G10, sql)
    assert result.verdict == "exec_error"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not (tmp_path / "evil.db").exists()


def test_endless_recursion_times_out_and_a_huge_cross_join_is_capped():
    path = database_path(EN, STORE)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    endless = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
    result = verdict(G10, endless, time_limit=0.5)
    assert result.verdict == "timeout"
    cross = "SELECT * FROM staff a, staff b, staff c, staff d, customers e, products f"
    outcome = run_query(connect(path), cross, time_limit=10, max_rows=1000)
    assert outcome.ok and outcome.truncated and len(outcome.rows) == 1000
    assert verdict(G10, cross, max_rows=1000).verdict == "unverifiable"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_verify_command_judges_a_file_and_writes_the_kept_pairs(workdir):
    pairs = [
        (STORE, G10, G10.lower()),  # same_as_gold
        (STORE, G10, G10.replace("T2.product_type_code ,  T2.product_name", "T2.product_name, T2.product_type_code")),
        (STORE, G10, G10.replace("supplier_id  =  3", "supplier_id  =  2")),  # wrong_result
        (STORE, G10, "SELECT * FROM no_such_table"),  # exec_error
        ("wta_1", EMPTY_GOLD, "SELECT 1"),  # wrong_result: the gold returns no rows, this one does
        ("concert_singer", "SELECT name , land , alter FROM sänger ORDER BY alter DESC", "SELECT 1"),  # gold fails
        (STORE, G44, G44.replace("DISTINCT ", "")),  # equivalent, multiset differs
    ]
    source = workdir / "old.jsonl"
    source.write_bytes(
        b"".join(
            orjson.dumps({"instruction": "q", "input": "", "chosen": g, "rejected": r, "db_id": db}) + b"\n"
            for db, g, r in pairs
        )
    )
    root = workdir / "db"
    shutil.copytree(EN, root)
    shutil.copytree(DE / "wta_1", root / "wta_1")
    shutil.copytree(DE / "concert_singer", root / "concert_singer")
    out = workdir / "verified.jsonl"
    result = run_cli(["verify", str(source), "--db-root", str(root), "--output", str(out)])
    table = result.output.splitlines()
    assert table[0].split() == ["verdict", "kept", "dropped"]
    assert "equivalent          0        1" in result.output  # G44 without DISTINCT
    assert "disputed            0        1" in result.output  # columns reordered: BIRD says wrong
    assert "same_as_gold        0        1" in result.output
    assert "wrong_result        2        0" in result.output
    assert "exec_error          1        0" in result.output
    assert "unverifiable        1        0" in result.output
    verdicts = ["wrong_result", "exec_error", "wrong_result", "unverifiable"]
    assert [line["verdict"] for line in read_jsonl(out)] == verdicts
    strict = workdir / "strict.jsonl"
    run_cli(
        [
            "verify",
            str(source),
            "--db-root",
            str(root),
            "--output",
            str(strict),
            "--equivalence",
            "multiset",
            "--drop-unverifiable",
        ]
    )
    assert [line["verdict"] for line in read_jsonl(strict)] == [
        "wrong_result",
        "exec_error",
        "wrong_result",
        "equivalent",
    ]


def test_verify_names_a_line_without_its_database_field(workdir):
    source = workdir / "old.jsonl"
    source.write_bytes(orjson.dumps({"chosen": "SELECT 1", "rejected": "SELECT 2"}) + b"\n")
    result = run_cli(["verify", str(source), "--db-root", str(EN), "--output", str(workdir / "o.jsonl")], expect=1)
    assert "line 1: field 'db_id' is missing or not a string" in result.output
    assert not (workdir / "o.jsonl").exists()


def test_verdicts_on_variants_of_every_shipped_gold_query():
    """The variants `make bench` reports on (docs/benchmarks.md), over 302 real golds:
    a reformatted gold is never a reject, a reordered one never wrong, a flipped filter rarely right."""
    import json
    from collections import Counter

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench import gold_variants

    from prefgen.config import CheckPolicy
    from prefgen.sql.workers import Checker
    from prefgen.tools.verify import judge_pair

    table = Counter()
    for data, root in (
        (ROOT / "examples/spider_en/department_store_alpaca.json", EN),
        (DE.parent / "spider_de_alpaca.json", DE),
    ):
        checker = Checker(CheckPolicy(str(root)))
        for record in json.loads(data.read_text(encoding="utf-8")):
            for kind, sql in gold_variants(record["output"]).items():
                table[kind, judge_pair(checker, record["db_id"], record["output"], sql).verdict] += 1
        checker.close()
    kinds = {kind for kind, _ in table}
    assert kinds == {"reformatted", "columns reordered", "DISTINCT dropped", "wrong filter"}
    assert {v for k, v in table if k == "reformatted"} == {"same_as_gold"}
    # columns reordered: Spider right, BIRD wrong, so with both (the default) disputed, never a reject
    assert {v for k, v in table if k == "columns reordered"} <= {"disputed", "equivalent", "unverifiable"}
    assert table["columns reordered", "disputed"] > table["columns reordered", "unverifiable"]
    assert {v for k, v in table if k == "DISTINCT dropped"} <= {"equivalent", "unverifiable"}
    assert table["DISTINCT dropped", "equivalent"] > table["DISTINCT dropped", "unverifiable"]
    wrong = sum(n for (k, _), n in table.items() if k == "wrong filter")
    assert table["wrong filter", "wrong_result"] > 0.8 * wrong
