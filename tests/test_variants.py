"""Database variants (--db-variants): a coincidence on one database is caught on its perturbed copies."""

import hashlib
import logging
import sqlite3
import stat

import orjson
import pytest
from conftest import (
    DB_ROOT,
    FAILS,
    RIGHT_TOO,
    ROOT,
    WRONG,
    ScriptedEngine,
    query,
    read_jsonl,
    run_cli,
    scripted,
    write_records,
)

from prefgen.config import DEFAULT_DB_VARIANTS, CheckPolicy, GenerateConfig
from prefgen.executors import generate
from prefgen.resume.fingerprint import fingerprint_of
from prefgen.resume.settings import resolve
from prefgen.sql import variants
from prefgen.sql.workers import Checker

DB = DB_ROOT / "department_store" / "department_store.sqlite"
# A real coincidence in the shipped Spider database: product 3 is the one named 'black jeans'
COINCIDENCE_GOLD = "SELECT product_price FROM products WHERE product_name = 'black jeans'"
COINCIDENCE = "SELECT product_price FROM products WHERE product_id = 3"
# Answers that are right on every database (the gold of conftest.scripted and its rewrites)
GOLD = "SELECT product_name, product_price FROM products WHERE product_price > 900"
RIGHT = "SELECT product_name, product_price FROM products WHERE 900 < product_price"
RIGHT_ANSWERS = [
    RIGHT,
    RIGHT_TOO,
    "SELECT product_name, product_price FROM products WHERE product_price > 900 ORDER BY product_id",
    "SELECT p.product_name, p.product_price FROM products AS p WHERE NOT p.product_price <= 900",
]
# A real dispute over the suite in the shipped German Spider data (network_1, "the student with the
# most friends"): DISTINCT added to the gold picks the gold's student on the original and on
# variants 1 and 2; on variant 3 the top student (3 friends) shares the name Jordan with one with 1,
# DISTINCT merges their rows, SQLite orders the merged row by the count 1, and another name comes
# first. Spider's rule strips DISTINCT (the gold again: right on every database); BIRD's compares
# the rows (wrong on variant 3).
DE_ROOT = ROOT / "examples" / "spider_de" / "db"
MOST_FRIENDS = (
    "SELECT T2.name FROM freund AS T1 JOIN oberschüler AS T2 ON T1.schüler_id = T2.id "
    "GROUP BY T1.schüler_id ORDER BY count(*) DESC LIMIT 1"
)
DISTINCT_NAME = MOST_FRIENDS.replace("SELECT", "SELECT DISTINCT")
FEWEST_FRIENDS = MOST_FRIENDS.replace("DESC", "ASC")
DISPUTED_ON_3 = "differs on variant 3 of 3: bird: wrong (other rows); spider: right"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(variants.CACHE_ENV, str(tmp_path / "variant-cache"))
    return tmp_path / "variant-cache"


def checker(k, **policy):
    return Checker(CheckPolicy(db_root=str(DB_ROOT), db_variants=k, **policy))


def test_a_variant_catches_an_answer_right_by_coincidence_on_the_shipped_database():
    assert checker(0)("department_store", COINCIDENCE_GOLD, COINCIDENCE).verdict == "equivalent"
    verdict = checker(DEFAULT_DB_VARIANTS)("department_store", COINCIDENCE_GOLD, COINCIDENCE)
    assert (verdict.verdict, verdict.detail, verdict.variant) == ("wrong_result", "differs on variant 1 of 3", 1)
    assert verdict.spider is False and verdict.bird is False


def test_answers_right_on_every_database_stay_equivalent_and_wrong_ones_stay_wrong():
    check = checker(DEFAULT_DB_VARIANTS)
    for answer in RIGHT_ANSWERS:
        verdict = check("department_store", GOLD, answer)
        assert (verdict.verdict, verdict.variant) == ("equivalent", None), answer
    assert check("department_store", GOLD, WRONG).verdict == "wrong_result"
    assert check("department_store", GOLD, FAILS).verdict == "exec_error"


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_variants_keep_types_and_keys_valid_live_outside_the_database_folder_and_are_read_only(cache):
    before = {p: digest(p) for p in DB.parent.iterdir()}
    checker(DEFAULT_DB_VARIANTS)("department_store", COINCIDENCE_GOLD, COINCIDENCE)
    assert {p: digest(p) for p in DB.parent.iterdir()} == before  # the user's folder is untouched
    files = sorted(cache.glob("*/variant-*.sqlite"))
    assert [f.name for f in files] == ["variant-1.sqlite", "variant-2.sqlite", "variant-3.sqlite"]
    original = sqlite3.connect(f"file:{DB}?mode=ro", uri=True)
    schema = "select type, name, sql from sqlite_master order by name"
    changed = 0
    for path in files:
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        assert conn.execute(schema).fetchall() == original.execute(schema).fetchall()
        assert conn.execute("pragma integrity_check").fetchall() == [("ok",)]
        assert conn.execute("pragma foreign_key_check").fetchall() == []  # no row lost its referenced row
        for (table,) in original.execute("select name from sqlite_master where type = 'table'"):
            rows = f'select * from "{table}"'
            columns = [d[0] for d in original.execute(rows).description]
            for i, column in enumerate(columns):  # values moved within their column, of the same types
                values = {r[i] for r in conn.execute(rows)}
                assert values <= {r[i] for r in original.execute(rows)}, (table, column)
            changed += sorted(conn.execute(rows)) != sorted(original.execute(rows))
        conn.close()
    assert changed >= 3
    # model SQL cannot write to a variant: it is opened like the original, through execute.connect
    check = checker(1)
    check("department_store", GOLD, RIGHT)
    conn = check.variants.connections["department_store"][0]
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("delete from products")


def test_variants_are_drawn_from_the_seed_and_built_once(tmp_path, monkeypatch, cache):
    checker(2, variant_seed=7)("department_store", COINCIDENCE_GOLD, COINCIDENCE)
    first = {p.relative_to(cache): digest(p) for p in cache.rglob("*.sqlite")}
    mtimes = {p: p.stat().st_mtime_ns for p in cache.rglob("*.sqlite")}
    checker(2, variant_seed=7)("department_store", COINCIDENCE_GOLD, COINCIDENCE)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.sqlite")} == mtimes  # found, not built again
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv(variants.CACHE_ENV, str(elsewhere))
    checker(2, variant_seed=7)("department_store", COINCIDENCE_GOLD, COINCIDENCE)
    assert {p.relative_to(elsewhere): digest(p) for p in elsewhere.rglob("*.sqlite")} == first
    checker(2, variant_seed=8)("department_store", COINCIDENCE_GOLD, COINCIDENCE)
    assert len(list(elsewhere.glob("*"))) == 2  # another seed, other variants


def test_a_database_over_the_size_limit_is_checked_on_the_original_only_with_one_warning(caplog, cache):
    check = checker(3, db_variant_max_mb=0.01)
    with caplog.at_level(logging.WARNING, logger="prefgen"):
        for _ in range(3):
            assert check("department_store", COINCIDENCE_GOLD, COINCIDENCE).verdict == "equivalent"
    warnings = [r.getMessage() for r in caplog.records if "db-variant-max-mb" in r.getMessage()]
    assert len(warnings) == 1 and "department_store" in warnings[0] and not cache.exists()


def test_verify_keeps_a_reject_that_a_variant_tells_apart(workdir):
    pairs = workdir / "pairs.jsonl"
    line = {"instruction": "Price of the black jeans?", "input": "", "chosen": COINCIDENCE_GOLD}
    pairs.write_bytes(orjson.dumps({**line, "rejected": COINCIDENCE, "db_id": "department_store"}) + b"\n")
    args = ["verify", str(pairs), "--db-root", str(DB_ROOT), "--output", str(workdir / "out.jsonl")]
    run_cli([*args, "--db-variants", "0"])
    assert read_jsonl(workdir / "out.jsonl") == []  # one database: the reject looks right, and is dropped
    run_cli(args)
    (kept,) = read_jsonl(workdir / "out.jsonl")
    assert kept["verdict"] == "wrong_result" and kept["verdict_detail"] == "differs on variant 1 of 3"


def test_onpolicy_a_coincidence_is_rejected_not_chosen_and_the_ledger_names_the_variant(workdir):
    data = write_records(
        workdir / "data.json",
        [{"instruction": "Price of the black jeans?", "output": COINCIDENCE_GOLD, "db_id": "department_store"}],
    )
    right = "SELECT product_price FROM products WHERE 'black jeans' = product_name"
    out = workdir / "pairs.jsonl"
    cfg = GenerateConfig.from_flags(
        base_model="scripted",
        sft_data=str(data),
        output=str(out),
        num_rejects=2,
        db_root=str(DB_ROOT),
        device="cpu",
        pairs="onpolicy",
        batch_size=2,
    )
    generate(
        cfg, ["test"], show_progress=False, engine=ScriptedEngine(lambda s, attempt: [right, COINCIDENCE][attempt])
    )
    (pair,) = read_jsonl(out)
    assert (pair["chosen"], pair["rejected"]) == (right, COINCIDENCE)
    assert pair["rejected_detail"] == "differs on variant 1 of 3"
    ledger = str(out) + ".ledger.sqlite"
    rows = {r["sql"]: r for r in query(ledger, "select sql, role, variant, reward from units")}
    assert (rows[COINCIDENCE]["role"], rows[COINCIDENCE]["variant"], rows[COINCIDENCE]["reward"]) == (
        "rejected",
        1,
        0.1,
    )
    assert (rows[right]["role"], rows[right]["variant"], rows[right]["reward"]) == ("chosen", None, 1.0)
    fingerprint = orjson.loads(query(ledger, "select value from meta where key = 'fingerprint'")[0]["value"])
    assert fingerprint["db_variants"] == DEFAULT_DB_VARIANTS


def test_a_ledger_made_before_variants_resumes_without_them():
    cfg = GenerateConfig.from_flags(base_model="m", sft_data="d.json", output="o.jsonl", db_root=str(DB_ROOT))
    assert resolve(cfg, {"db_root": "x"}).db_variants == 0  # made before: judged as it was
    assert resolve(cfg, {"db_root": "x", "db_variants": 3}).db_variants == 3
    assert resolve(cfg, None).db_variants == DEFAULT_DB_VARIANTS
    assert "db_variants" not in fingerprint_of(resolve(cfg, {"db_root": "x"}))
    assert resolve(cfg, None).check_policy().db_variants == DEFAULT_DB_VARIANTS and cfg.check.variant_seed == cfg.seed


def test_scripted_runs_judge_with_variants(workdir):
    _, lines, ledger = scripted(workdir, [RIGHT, WRONG], records=1)
    assert [r["variant"] for r in query(ledger, "select variant from units")] == [None, None]
    assert lines and lines[0]["chosen"] == RIGHT


def test_db_variants_join_the_fingerprint_of_a_generate_run(workdir, tiny_model, sample_data):
    from conftest import generate_args

    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, max_samples=2, db_root=str(DB_ROOT))
    run_cli([*args, "--db-variants", "1"])
    before = out.read_bytes()
    fingerprint = orjson.loads(
        query(str(out) + ".ledger.sqlite", "select value from meta where key = 'fingerprint'")[0]["value"]
    )
    assert fingerprint["db_variants"] == 1
    refused = run_cli([*args, "--db-variants", "2"], expect=1)
    assert "started with other settings: db_variants (ledger: 1, now: 2)" in refused.output
    run_cli([*args, "--db-variants", "1"])  # the same settings: nothing left to do
    assert out.read_bytes() == before


def most_friends_record() -> dict:
    """The shipped German record whose gold is MOST_FRIENDS."""
    records = orjson.loads((ROOT / "examples" / "spider_de" / "spider_de_alpaca.json").read_bytes())
    return next(r for r in records if r["output"] == MOST_FRIENDS)


@pytest.mark.parametrize(
    "evaluator, expected",
    [  # (verdict, detail, variant, spider, bird): the scores recorded are each evaluator's over the suite
        ("both", ("disputed", DISPUTED_ON_3, 3, True, False)),
        ("spider", ("equivalent", "same rows", None, True, False)),
        ("bird", ("wrong_result", "differs on variant 3 of 3", 3, True, False)),
        ("lenient", ("wrong_result", "differs on variant 3 of 3", 3, False, False)),  # old ledgers: as before
    ],
)
def test_each_evaluator_scores_an_answer_over_the_whole_suite(evaluator, expected):
    original = Checker(CheckPolicy(db_root=str(DE_ROOT), db_variants=0, evaluator=evaluator))
    assert original("network_1", MOST_FRIENDS, DISTINCT_NAME).verdict == "equivalent"
    verdict = Checker(CheckPolicy(db_root=str(DE_ROOT), evaluator=evaluator))("network_1", MOST_FRIENDS, DISTINCT_NAME)
    assert (verdict.verdict, verdict.detail, verdict.variant, verdict.spider, verdict.bird) == expected


def test_pair_never_rejects_an_answer_spider_scores_right_on_every_database(workdir):
    """Before, the variant that BIRD's rule tells apart made the answer `wrong_result`, both
    scores false, and `prefgen pair` paired it as a reject."""
    source = workdir / "answers.jsonl"
    answers = [DISTINCT_NAME, FEWEST_FRIENDS]
    source.write_bytes(b"".join(orjson.dumps({**most_friends_record(), "answer": a}) + b"\n" for a in answers))
    out = workdir / "pairs.jsonl"
    args = ["pair", str(source), "--db-root", str(DE_ROOT), "--output", str(out), "--num-rejects", "2"]
    result = run_cli([*args, "--fallback", "gold"])
    assert [(line["chosen"], line["rejected"]) for line in read_jsonl(out)] == [(MOST_FRIENDS, FEWEST_FRIENDS)]
    assert "disputed" in result.output


def test_onpolicy_the_ledger_records_the_suite_scores_of_a_disputed_answer(workdir):
    data = write_records(workdir / "data.json", [most_friends_record()])
    right = (
        "SELECT T2.name FROM oberschüler AS T2 JOIN freund AS T1 ON T2.id = T1.schüler_id "
        "GROUP BY T1.schüler_id ORDER BY count(*) DESC LIMIT 1"
    )
    answers = [right, DISTINCT_NAME, FEWEST_FRIENDS]
    out = workdir / "pairs.jsonl"
    cfg = GenerateConfig.from_flags(
        base_model="scripted",
        sft_data=str(data),
        output=str(out),
        num_rejects=3,
        db_root=str(DE_ROOT),
        device="cpu",
        pairs="onpolicy",
        batch_size=3,
    )
    generate(cfg, ["test"], show_progress=False, engine=ScriptedEngine(lambda s, attempt: answers[attempt]))
    assert [(p["chosen"], p["rejected"]) for p in read_jsonl(out)] == [(right, FEWEST_FRIENDS)]
    ledger = str(out) + ".ledger.sqlite"
    columns = "role, verdict, verdict_detail, variant, spider_correct, bird_correct, reward"
    units = {r.pop("sql"): r for r in query(ledger, f"select sql, {columns} from units")}
    assert units[DISTINCT_NAME] == {
        "role": "neither",
        "verdict": "disputed",
        "verdict_detail": DISPUTED_ON_3,
        "variant": 3,
        "spider_correct": 1,
        "bird_correct": 0,
        "reward": None,
    }


@pytest.mark.parametrize(
    "evaluator, expected",
    [  # (verdict, detail, variant, spider, bird) with variants
        (
            "both",
            (
                "wrong_result",
                "on the original: bird: wrong (columns in another order); spider: right | differs on variant 1 of 3",
                1,
                False,
                False,
            ),
        ),
        ("spider", ("wrong_result", "differs on variant 1 of 3", 1, False, False)),
        ("bird", ("wrong_result", "", None, False, False)),  # wrong on the original; Spider's score is the suite's
    ],
)
def test_a_disputed_answer_is_wrong_once_the_evaluator_that_scored_it_right_is_wrong_on_a_variant(evaluator, expected):
    """The coincidence with its columns swapped: on the original Spider scores it right (column
    permutations) and BIRD wrong; variant 1 moves 'black jeans', and Spider's rule catches it too."""
    swapped = "SELECT product_price, product_name FROM products WHERE product_id = 3"
    gold = "SELECT product_name, product_price FROM products WHERE product_name = 'black jeans'"
    assert checker(0, evaluator=evaluator)("department_store", gold, swapped).spider is True
    verdict = checker(DEFAULT_DB_VARIANTS, evaluator=evaluator)("department_store", gold, swapped)
    assert (verdict.verdict, verdict.detail, verdict.variant, verdict.spider, verdict.bird) == expected
