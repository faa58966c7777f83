"""Judging: SQL normalization, same-as-gold and the dedup modes."""

import pytest
from conftest import generate_args, query, read_jsonl, run_cli, write_records

from prefgen.flow.judge import DedupIndex, judge_batch
from prefgen.flow.plan import plan_units
from prefgen.flow.records import validate
from prefgen.sql.normalize import normalize_sql
from prefgen.units import Answer

SAME = [
    ("SELECT T1.name FROM Singer AS T1 WHERE T1.age > 20 ;", "select a.NAME from singer a where a.Age > 20"),
    ("SELECT `name` FROM singer", 'SELECT "name" FROM singer'),
    ("SELECT name FROM singer", "select  name\n from SINGER;"),
    (
        "SELECT count(*) AS cnt FROM t GROUP BY x ORDER BY cnt",
        "SELECT COUNT(*) AS total FROM t GROUP BY x ORDER BY total",
    ),
    ('SELECT name FROM t WHERE c = "United"', 'SELECT  name FROM t WHERE c = "United";'),
    ("SELEC garbage((", "SELEC   garbage((;"),
    ("SELECT Name FROM Sänger", "select name from sänger"),
]
DIFFERENT = [
    ("SELECT name FROM t WHERE c = 'United'", "SELECT name FROM t WHERE c = 'united'"),
    ('SELECT name FROM t WHERE c = "United"', 'SELECT name FROM t WHERE c = "united"'),
    ("SELECT name FROM t", "SELECT DISTINCT name FROM t"),
    ("SELECT name FROM t ORDER BY age", "SELECT name FROM t ORDER BY age DESC"),
    ("SELECT name FROM sänger", "SELECT name FROM SÄNGER"),  # SQLite folds ASCII letters only
]


@pytest.mark.parametrize("a, b", SAME)
def test_layout_does_not_matter(a, b):
    assert normalize_sql(a) == normalize_sql(b)


@pytest.mark.parametrize("a, b", DIFFERENT)
def test_meaning_does(a, b):
    assert normalize_sql(a) != normalize_sql(b)


def judge(texts, gold="SELECT name FROM singer WHERE age > 20", dedup=""):
    record = validate("mem", 0, {"instruction": "q", "output": gold})
    units = list(plan_units([record], len(texts), seed=0))
    answers = [Answer(text, 10, 5, 0.1) for text in texts]
    return [j.status for j in judge_batch(units, answers, DedupIndex(dedup))]


def test_same_as_gold_is_not_written_whatever_the_layout():
    texts = ["select NAME from Singer where age>20;", "```sql\nSELECT name FROM singer WHERE age > 21\n```"]
    assert judge(texts) == ["same_as_gold", "written"]


def test_dedup_modes():
    texts = ["SELECT a FROM t", "select A from T;", "SELECT a FROM t", "SELECT b FROM t"]
    assert judge(texts, dedup="") == ["written"] * 4
    assert judge(texts, dedup="exact") == ["written", "written", "duplicate", "written"]
    assert judge(texts, dedup="sql") == ["written", "duplicate", "duplicate", "written"]


def test_dedup_sql_flag_end_to_end(workdir, tiny_model):
    records = [{"instruction": f"Question {i}?", "input": "", "output": f"SELECT {i}"} for i in range(3)]
    data = write_records(workdir / "data.json", records)
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, data, out, num_rejects=3, temperature=0, dedup_rejects="sql", max_samples=0))
    statuses = [u["status"] for u in query(str(out) + ".ledger.sqlite", "select status from units")]
    assert statuses.count("written") == 3 and statuses.count("duplicate") == 6
    assert len(read_jsonl(out)) == 3
    fingerprint = query(str(out) + ".ledger.sqlite", "select value from meta where key = 'fingerprint'")
    assert '"dedup_rejects":"sql"' in fingerprint[0]["value"]
