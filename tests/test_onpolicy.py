"""On-policy pairs: the model's own correct answer as chosen, its own wrong answer as rejected."""

import re

import orjson
import pytest
from conftest import (
    DB_ROOT,
    FAILS,
    GOLD,
    REASONED,
    RIGHT,
    RIGHT_TOO,
    SWAPPED,
    WRONG,
    WRONG_TOO,
    ScriptedEngine,
    query,
    read_jsonl,
    run_cli,
    scripted,
    write_records,
)

from prefgen.config import GenerateConfig
from prefgen.errors import ConfigError
from prefgen.executors import generate
from prefgen.flow.pairing import Candidate, form_pairs
from prefgen.runtime import faults


def sides(lines):
    return [(line["chosen"], line["rejected"]) for line in lines]


def test_correct_and_wrong_answers_pair_in_the_documented_order(workdir):
    answers = [FAILS, RIGHT, WRONG, RIGHT_TOO, WRONG_TOO, FAILS]
    summary, lines, ledger = scripted(workdir, answers, records=2, num_rejects=4, max_attempts=0)
    assert summary.finished
    # attempts 0-3: wrong_result (2) before exec_error (0); chosen 1 and 3 in rotation
    expected = [(RIGHT, WRONG), (RIGHT_TOO, FAILS)]
    assert sides(lines) == expected * 2
    first = lines[0]
    assert first["chosen_source"] == "model" and first["sample_index"] == 0 and first["pair_index"] == 0
    assert (first["chosen_attempt"], first["chosen_seed"], first["chosen_verdict"]) == (1, 43, "equivalent")
    assert (first["rejected_attempt"], first["rejected_seed"], first["rejected_verdict"]) == (2, 44, "wrong_result")
    assert lines[1]["rejected_verdict"] == "exec_error" and "no such column" in lines[1]["rejected_detail"]
    assert first["db_id"] == "department_store" and first["instruction"] == "q0"
    units = query(ledger, "select reject_index, status, role, verdict from units where sample_index = 0")
    assert [(u["status"], u["role"]) for u in units] == [
        ("candidate", "rejected"),
        ("candidate", "chosen"),
        ("candidate", "rejected"),
        ("candidate", "chosen"),
    ]
    pairs = query(ledger, "select * from pairs where sample_index = 0 order by pair_index")
    assert [(p["chosen_source"], p["chosen_attempt"], p["rejected_attempt"]) for p in pairs] == [
        ("model", 1, 2),
        ("model", 3, 0),
    ]
    assert [orjson.loads(p["line"]) for p in pairs] == lines[:2]
    (paired,) = query(ledger, "select * from paired_samples where sample_index = 1")
    assert (paired["candidates"], paired["chosen_candidates"], paired["rejected_candidates"], paired["pairs"]) == (
        4,
        2,
        2,
        2,
    )


def test_the_gold_query_again_is_a_correct_answer_not_a_same_as_gold(workdir):
    _, lines, ledger = scripted(workdir, [GOLD, WRONG], num_rejects=2)
    assert sides(lines) == [(GOLD, WRONG)]
    assert [u["role"] for u in query(ledger, "select role from units order by reject_index")] == ["chosen", "rejected"]


def test_only_correct_answers_give_no_pair_and_are_counted(workdir):
    summary, lines, ledger = scripted(workdir, [RIGHT, RIGHT_TOO], fallback="gold")
    assert summary.finished and lines == []
    status = orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)
    assert status["pairs"] == {
        "mode": "onpolicy",
        "samples_paired": 1,
        "samples_with_correct": 1,
        "pass_at_k": 1.0,
        "samples_without_correct": 0,
        "samples_without_wrong": 1,
        "samples_with_pairs": 0,
        "pairs": 0,
        "fallbacks": 0,
    }
    assert status["samples"]["complete"] == 1


@pytest.mark.parametrize("fallback, expected", [("none", []), ("gold", [(GOLD, WRONG), (GOLD, FAILS)])])
def test_only_wrong_answers_pair_with_the_gold_only_with_fallback(workdir, fallback, expected):
    _, lines, ledger = scripted(workdir, [FAILS, WRONG], fallback=fallback)
    assert sides(lines) == expected
    assert all(line["chosen_source"] == "gold" and line["chosen_attempt"] is None for line in lines)
    status = orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)
    assert status["pairs"]["samples_without_correct"] == 1
    assert status["pairs"]["fallbacks"] == (1 if fallback == "gold" else 0)
    assert status["pairs"]["pass_at_k"] == 0.0
    text = run_cli(["ledger", "status", ledger]).output
    assert "of 1 samples judged, 0 have a correct answer (pass@k 0.0%)" in text


def test_answer_full_keeps_the_reasoning_text(workdir):
    answers = [REASONED.format(sql=RIGHT), REASONED.format(sql=WRONG)]
    _, lines, _ = scripted(workdir, answers, answer="full")
    assert sides(lines) == [(answers[0], answers[1])]


def test_the_same_sql_is_never_on_both_sides():
    def candidate(attempt, role, sql, verdict):
        return Candidate(attempt, role, sql, answer=sql, verdict=verdict)

    # an unverifiable-as-reject policy could make one SQL both: layout aside, it is the same query
    candidates = [
        candidate(0, "chosen", RIGHT, "equivalent"),
        candidate(1, "rejected", RIGHT.lower() + " ;", "unverifiable"),
        candidate(2, "rejected", WRONG, "wrong_result"),
        candidate(3, "rejected", "  " + WRONG, "wrong_result"),  # the same wrong query again
    ]
    pairs = form_pairs(candidates, 3)
    assert [(p.chosen.attempt, p.rejected.attempt) for p in pairs] == [(0, 2)]
    # the repeated reject comes after the distinct ones, and never repeats a pair: (0, 3) would
    # be (0, 2) again; attempt 1 pairs with the other chosen, whose SQL differs from it
    more = candidates + [candidate(4, "chosen", RIGHT_TOO, "equivalent")]
    assert [(p.chosen.attempt, p.rejected.attempt) for p in form_pairs(more, 4)] == [(0, 2), (4, 1)]
    assert [(p.chosen.attempt, p.rejected.attempt) for p in form_pairs(more, 4, answer="full")] == [
        (0, 2),
        (4, 1),
        (0, 3),  # with --answer full the texts decide: "  " + WRONG is another text
    ]


def test_an_empty_gold_and_an_empty_answer_are_neither_chosen_nor_rejected(workdir):
    empty_gold = "SELECT product_name FROM products WHERE product_price > 100000"
    data = write_records(
        workdir / "data.json", [{"instruction": "q", "output": empty_gold, "db_id": "department_store"}]
    )
    answers = ["SELECT product_name FROM products WHERE product_price > 200000", WRONG_TOO]
    cfg = GenerateConfig.from_flags(
        base_model="scripted",
        sft_data=str(data),
        output=str(workdir / "p.jsonl"),
        num_rejects=2,
        db_root=str(DB_ROOT),
        device="cpu",
        pairs="onpolicy",
    )
    generate(cfg, ["test"], show_progress=False, engine=ScriptedEngine(lambda s, a: answers[a]))
    units = query(str(workdir / "p.jsonl.ledger.sqlite"), "select verdict, verdict_detail, role from units")
    assert [(u["verdict"], u["role"]) for u in units] == [("equivalent", "neither"), ("wrong_result", "rejected")]
    assert units[0]["verdict_detail"] == "both return no rows"
    assert read_jsonl(workdir / "p.jsonl") == []  # no chosen, no fallback: no pair


def test_further_attempts_until_the_pairs_can_be_formed_resumed_after_crashes(workdir, monkeypatch):
    answers = [WRONG, WRONG_TOO, FAILS, WRONG, RIGHT, FAILS, RIGHT_TOO, WRONG]
    settings = dict(records=4, num_rejects=2, max_attempts=7, dedup_rejects="sql", batch_size=3)
    reference_dir = workdir / "reference"
    reference_dir.mkdir()
    _, expected, expected_ledger = scripted(reference_dir, answers, **settings)
    crashes = 0
    for nth in (2, 1, 3, 2):
        monkeypatch.setenv("PREFGEN_FAULT", f"after_jsonl_write:raise@{nth}")
        faults._hits.clear()
        with pytest.raises(RuntimeError, match="injected fault"):
            scripted(workdir, answers, **settings)
        crashes += 1
    monkeypatch.delenv("PREFGEN_FAULT")
    summary, lines, ledger = scripted(workdir, answers, **settings)
    assert crashes == 4 and summary.finished
    columns = "sample_index, reject_index, seed, status, role, verdict, sql"
    order = "order by sample_index, reject_index"
    assert query(ledger, f"select {columns} from units {order}") == query(
        expected_ledger, f"select {columns} from units {order}"
    )
    # waves of 2: 0-1 wrong (no chosen yet), 2-3 (a failing one, a duplicate), 4-5 (4 is right):
    # now 2 pairs form and attempt 6 is not made
    attempts = query(ledger, "select reject_index from units where sample_index = 0")
    assert [u["reject_index"] for u in attempts] == [0, 1, 2, 3, 4, 5]
    assert sorted(map(orjson.dumps, lines)) == sorted(map(orjson.dumps, expected))
    assert sides(lines[:2]) == [(RIGHT, WRONG), (RIGHT, WRONG_TOO)]


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(pairs="onpolicy"), "--pairs onpolicy needs --db-root"),
        (
            dict(pairs="onpolicy", db_root="x", answer="full", fallback="gold"),
            "--fallback gold works with --answer sql",
        ),
        (dict(answer="full"), "--answer full and --fallback gold need --pairs onpolicy"),
    ],
)
def test_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        GenerateConfig.from_flags(base_model="m", sft_data="d", output="o", **settings)


def test_onpolicy_joins_the_fingerprint(workdir, tiny_model, sample_data):
    from conftest import generate_args

    out = workdir / "pairs.jsonl"
    base = dict(max_samples=1, num_rejects=1, db_root=DB_ROOT)
    run_cli(generate_args(tiny_model, sample_data, out, **base))
    result = run_cli(generate_args(tiny_model, sample_data, out, pairs="onpolicy", **base), expect=1)
    assert "other settings" in result.output and "pairs (ledger: None, now: 'onpolicy')" in result.output


def candidates_file(path, lines):
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def record(i, answer, **extra):
    return {"instruction": f"q{i}", "input": "", "output": GOLD, "db_id": "department_store", "answer": answer, **extra}


def test_pair_forms_the_same_pairs_from_answers_generated_elsewhere(workdir):
    source = candidates_file(
        workdir / "answers.jsonl",
        [record(0, a, seed=7 + n) for n, a in enumerate([FAILS, RIGHT, WRONG, RIGHT_TOO])]
        + [record(1, a) for a in [FAILS, WRONG]]
        + [record(2, a) for a in [RIGHT, ""]],
    )
    out = workdir / "pairs.jsonl"
    result = run_cli(["pair", str(source), "--db-root", str(DB_ROOT), "--output", str(out), "--num-rejects", "4"])
    lines = read_jsonl(out)
    assert sides(lines) == [(RIGHT, WRONG), (RIGHT_TOO, FAILS)]
    assert (lines[0]["chosen_seed"], lines[0]["rejected_seed"], lines[0]["sample_index"]) == (8, 9, 0)
    assert "answer" not in lines[0] and lines[0]["db_id"] == "department_store"
    assert re.search(r"with a correct answer\s+2 \(66.7%\)", result.output)
    assert re.search(r"^pairs written\s+2$", result.output, re.M)
    gold = workdir / "gold.jsonl"
    run_cli(["pair", str(source), "--db-root", str(DB_ROOT), "--output", str(gold), "--fallback", "gold"])
    assert sides(read_jsonl(gold)) == [(RIGHT, WRONG), (GOLD, WRONG)]


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [record(0, RIGHT), {"instruction": "q1", "output": GOLD, "db_id": "department_store"}],
            "line 2: field 'answer'",
        ),
        ([record(0, RIGHT), record(1, WRONG), record(0, WRONG)], "line 3: its record already had answers at line 1"),
        ([record(0, RIGHT), [1, 2]], "line 2 is not a JSON object"),
    ],
)
def test_pair_names_a_malformed_line_and_writes_nothing(workdir, lines, message):
    source = candidates_file(workdir / "answers.jsonl", lines)
    out = workdir / "pairs.jsonl"
    result = run_cli(["pair", str(source), "--db-root", str(DB_ROOT), "--output", str(out)], expect=1)
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() and not list(workdir.glob("*.pairing"))


def test_exports_of_onpolicy_pairs_load_unchanged(workdir):
    _, lines, _ = scripted(workdir, [RIGHT, WRONG])
    target = workdir / "exported"
    run_cli(["export", str(workdir / "pairs.jsonl"), "--format", "llamafactory", "--to", str(target)])
    (row,) = read_jsonl(target / "pairs.jsonl")
    assert (row["chosen"], row["rejected"]) == (RIGHT, WRONG)


def test_an_answer_the_evaluators_disagree_on_is_neither_and_each_score_is_recorded(workdir):
    """The gold's columns in another order: Spider scores it right, BIRD wrong. With both
    (the default) it is neither chosen nor rejected; with --evaluator spider it is chosen."""
    _, lines, ledger = scripted(workdir, [SWAPPED, RIGHT, WRONG], num_rejects=3)
    units = query(ledger, "select role, verdict, verdict_detail, spider_correct, bird_correct from units")
    assert units[0] == {
        "role": "neither",
        "verdict": "disputed",
        "verdict_detail": "bird: wrong (columns in another order); spider: right",
        "spider_correct": 1,
        "bird_correct": 0,
    }
    assert [(u["role"], u["spider_correct"], u["bird_correct"]) for u in units[1:]] == [
        ("chosen", 1, 1),
        ("rejected", 0, 0),
    ]
    assert sides(lines) == [(RIGHT, WRONG)]
    assert lines[0]["chosen_scores"] == {"spider": True, "bird": True}
    assert lines[0]["rejected_scores"] == {"spider": False, "bird": False}
    spider = workdir / "spider"
    spider.mkdir()
    _, lines, _ = scripted(spider, [SWAPPED, WRONG], num_rejects=2, evaluator="spider")
    assert sides(lines) == [(SWAPPED, WRONG)]
