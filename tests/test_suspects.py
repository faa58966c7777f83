"""Suspicious golds (suspects.py): a sample whose gold fails, or whose executed answers mostly
agree on a result the gold does not give, is flagged gold_suspect wherever answers are executed
(generate in both pair modes, `prefgen pair`, `prefgen verify`); --gold-suspect skip leaves it
without pairs. Answers come from the scripted engine (the tiny model writes random text) and are
executed on the shipped Spider database."""

import orjson
import pytest
from conftest import (
    DB_ROOT,
    FAILS,
    GOLD,
    RIGHT,
    WRONG,
    WRONG_TOO,
    browse_pages,
    query,
    read_jsonl,
    run_cli,
    scripted,
    write_records,
)

from prefgen.config import GenerateConfig
from prefgen.errors import ConfigError
from prefgen.flow.suspects import suspicion
from prefgen.resume.fingerprint import fingerprint_of
from prefgen.resume.settings import resolve
from prefgen.runtime import faults

ROW = {"status": "written", "verdict": "wrong_result", "verdict_detail": "", "result_digest": "a", "variant": None}


def rows(*changes):
    return [{**ROW, **change} for change in changes]


def test_the_rule_flags_failing_golds_and_answers_agreeing_on_another_result():
    assert suspicion(rows({"verdict": "unverifiable", "verdict_detail": "gold fails: no such column: x"}), 0.5) == (
        "gold fails: no such column: x"
    )
    assert suspicion(rows({}, {}), 0.5) == "2 of 2 executed answers agree on one result the gold does not give"
    assert suspicion(rows({}), 0.5) == ""  # one answer alone is no evidence
    assert suspicion(rows({}, {"result_digest": "b"}), 0.5) == ""  # two different wrong results
    # 2 of 4 agree: not more than half; 3 of 4 (one right) are
    assert suspicion(rows({}, {}, {"result_digest": "b"}, {"verdict": "equivalent", "result_digest": ""}), 0.5) == ""
    agreeing = rows({}, {}, {}, {"verdict": "equivalent", "result_digest": ""})
    assert suspicion(agreeing, 0.5).startswith("3 of 4")
    assert suspicion(agreeing, 0.75) == ""  # --suspect-share: more than 75% needed
    # a reject that is the gold up to layout agrees with the gold; so does an answer told apart only on a variant
    assert suspicion(rows({}, {}, {"status": "same_as_gold", "verdict": None, "result_digest": None}), 0.7) == ""
    assert suspicion(rows({"variant": 2}, {"variant": 1}), 0.5) == ""
    # answers not executed (no SQL, duplicates) do not count
    assert suspicion(rows({}, {}, {"status": "no_sql", "verdict": None, "result_digest": None}), 0.5) != ""


def test_gold_mode_keep_flags_every_line_of_a_suspect_sample_and_lists_it(workdir):
    # sample 1's units straddle the batches (batch size 3): they are committed together
    summary, lines, ledger = scripted(workdir, [WRONG, WRONG], records=3, pairs="gold")
    assert summary.finished and len(lines) == 6
    assert all(line["gold_suspect"] is True for line in lines)
    assert {line["gold_suspect_detail"] for line in lines} == {
        "2 of 2 executed answers agree on one result the gold does not give"
    }
    checks = query(ledger, "select sample_index, gold_suspect, suspect_detail from samples order by sample_index")
    assert [(c["sample_index"], c["gold_suspect"]) for c in checks] == [(0, 1), (1, 1), (2, 1)]
    status = orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)
    assert status["golds"] == {"mode": "keep", "checked": 3, "suspect": 3, "skipped": 0}
    assert "3 checked, 3 suspect" in run_cli(["ledger", "status", ledger]).output
    listed = run_cli(["ledger", "suspects", ledger]).output
    assert "3 golds worth a second look" in listed and GOLD in listed and "db department_store" in listed
    listed = orjson.loads(run_cli(["ledger", "suspects", ledger, "--json"]).output)
    assert [row["sample_index"] for row in listed] == [0, 1, 2]
    (status, body), (page_status, page) = browse_pages(
        ledger, "/ledger/suspects.json?_shape=array", "/-/dashboards/run"
    )
    assert status == page_status == 200 and "Golds worth a second look" in page
    assert [row["sample_index"] for row in orjson.loads(body)] == [0, 1, 2]


def test_gold_mode_lines_of_a_sound_gold_say_so(workdir):
    _, lines, ledger = scripted(workdir, [WRONG, WRONG_TOO], records=2, pairs="gold")
    assert len(lines) == 4 and {(line["gold_suspect"], line["gold_suspect_detail"]) for line in lines} == {(False, "")}
    assert run_cli(["ledger", "suspects", ledger]).output.strip() == "No suspect gold."


def test_gold_mode_skip_writes_no_line_for_a_suspect_gold_and_counts_it(workdir):
    summary, lines, ledger = scripted(workdir, [WRONG, WRONG], records=3, pairs="gold", gold_suspect="skip")
    assert summary.finished and lines == []
    units = query(ledger, "select status, detail from units")
    assert {u["status"] for u in units} == {"gold_suspect"} and len(units) == 6
    assert query(ledger, "select count(*) as n from sample_progress where complete")[0]["n"] == 3
    status = orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)
    assert status["golds"]["skipped"] == 3 and status["samples"]["complete"] == 3


def test_a_failing_gold_is_suspect(workdir):
    data = write_records(workdir / "data.json", [{"instruction": "q", "output": FAILS, "db_id": "department_store"}])
    out = workdir / "pairs.jsonl"
    cfg = dict(num_rejects=2, db_root=str(DB_ROOT), device="cpu", batch_size=3, pairs="gold")
    from conftest import ScriptedEngine

    from prefgen.executors import generate

    config = GenerateConfig.from_flags(base_model="scripted", sft_data=str(data), output=str(out), **cfg)
    generate(config, ["test"], show_progress=False, engine=ScriptedEngine(lambda s, a: [GOLD, WRONG][a]))
    (check,) = query(str(out) + ".ledger.sqlite", "select gold_suspect, suspect_detail from samples")
    assert check["gold_suspect"] == 1 and check["suspect_detail"].startswith("gold fails: no such column")


def test_onpolicy_skip_pairs_nothing_with_a_suspect_gold_where_keep_would_prefer_it(workdir):
    keep_dir, skip_dir = workdir / "keep", workdir / "skip"
    keep_dir.mkdir(), skip_dir.mkdir()
    _, kept, _ = scripted(keep_dir, [WRONG, WRONG], fallback="gold")
    assert [(line["chosen"], line["gold_suspect"]) for line in kept] == [(GOLD, True)]
    summary, skipped, ledger = scripted(skip_dir, [WRONG, WRONG], fallback="gold", gold_suspect="skip")
    assert summary.finished and skipped == []
    (sample,) = query(ledger, "select pairs from paired_samples")
    assert sample["pairs"] == 0
    assert orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)["golds"]["skipped"] == 1


def test_onpolicy_with_a_sound_gold_pairs_as_before(workdir):
    _, lines, _ = scripted(workdir, [RIGHT, WRONG], gold_suspect="skip")
    assert [(line["chosen"], line["rejected"], line["gold_suspect"]) for line in lines] == [(RIGHT, WRONG, False)]


def test_gold_mode_held_units_resume_after_crashes_to_the_uninterrupted_output(workdir, monkeypatch):
    answers = [WRONG, WRONG_TOO]
    settings = dict(records=5, pairs="gold", batch_size=3, gold_suspect="skip")
    reference = workdir / "reference"
    reference.mkdir()
    _, expected, _ = scripted(reference, answers, **settings)
    for nth in (2, 1, 3):
        monkeypatch.setenv("PREFGEN_FAULT", f"after_jsonl_write:raise@{nth}")
        faults._hits.clear()
        with pytest.raises(RuntimeError, match="injected fault"):
            scripted(workdir, answers, **settings)
    monkeypatch.delenv("PREFGEN_FAULT")
    summary, lines, ledger = scripted(workdir, answers, **settings)
    assert summary.finished and len(lines) == 10
    assert (workdir / "pairs.jsonl").read_bytes() == (reference / "pairs.jsonl").read_bytes()
    assert query(ledger, "select count(*) as n from samples where gold_suspect = 0")[0]["n"] == 5


def test_an_old_ledger_keeps_its_rule_and_bad_values_are_refused(workdir):
    cfg = GenerateConfig.from_flags(base_model="m", sft_data="d", output="o", db_root=str(DB_ROOT))
    assert resolve(cfg, {"db_root": str(DB_ROOT)}).gold_suspect == ""  # made before gold checks
    assert resolve(cfg, None).gold_suspect == "keep"
    assert fingerprint_of(resolve(cfg, None))["gold_suspect"] == "keep"
    assert "gold_suspect" not in fingerprint_of(resolve(cfg, {"db_root": str(DB_ROOT)}))
    with pytest.raises(ConfigError, match="--suspect-share"):
        GenerateConfig.from_flags(base_model="m", sft_data="d", output="o", suspect_share=1.5)
    result = run_cli(["pair", "x.jsonl", "--db-root", str(DB_ROOT), "--output", "o", "--gold-suspect", "drop"], 2)
    assert "gold-suspect" in result.output


def candidates_file(path, answers_by_record):
    lines = []
    for index, answers in enumerate(answers_by_record):
        for answer in answers:
            lines.append({"instruction": f"q{index}", "output": GOLD, "db_id": "department_store", "answer": answer})
    return write_records(path, lines, jsonl=True)


def test_pair_flags_and_skips_suspect_golds(workdir):
    source = candidates_file(workdir / "answers.jsonl", [[RIGHT, WRONG], [WRONG, WRONG]])
    common = [str(source), "--db-root", str(DB_ROOT), "--fallback", "gold"]
    kept = run_cli(["pair", *common, "--output", str(workdir / "kept.jsonl")]).output
    assert "suspect golds: 1 records" in kept and "line 3 (department_store): 2 of 2" in kept
    lines = read_jsonl(workdir / "kept.jsonl")
    assert [(line["instruction"], line["gold_suspect"]) for line in lines] == [("q0", False), ("q1", True)]
    skipped = run_cli(["pair", *common, "--gold-suspect", "skip", "--output", str(workdir / "skip.jsonl")]).output
    assert "1 skipped (no pair)" in skipped
    assert [line["instruction"] for line in read_jsonl(workdir / "skip.jsonl")] == ["q0"]


def test_verify_checks_each_samples_gold_on_its_rejects(workdir):
    pairs = [
        {"instruction": "q0", "chosen": GOLD, "rejected": WRONG, "db_id": "department_store"},
        {"instruction": "q0", "chosen": GOLD, "rejected": WRONG_TOO, "db_id": "department_store"},
        {"instruction": "q1", "chosen": GOLD, "rejected": WRONG, "db_id": "department_store"},
        {"instruction": "q1", "chosen": GOLD, "rejected": WRONG + " ", "db_id": "department_store"},
    ]
    source = write_records(workdir / "pairs.jsonl", pairs, jsonl=True)
    common = [str(source), "--db-root", str(DB_ROOT)]
    output = run_cli(["verify", *common, "--output", str(workdir / "kept.jsonl")]).output
    assert "suspect golds: 1 samples" in output and "line 3 (department_store)" in output
    flags = [(line["instruction"], line["gold_suspect"]) for line in read_jsonl(workdir / "kept.jsonl")]
    assert flags == [("q0", False), ("q0", False), ("q1", True), ("q1", True)]
    output = run_cli(["verify", *common, "--gold-suspect", "skip", "--output", str(workdir / "skip.jsonl")]).output
    assert "gold_suspect" in output  # the dropped pairs' row in the table
    assert [line["instruction"] for line in read_jsonl(workdir / "skip.jsonl")] == ["q0", "q0"]


def test_export_carries_the_flag_and_can_leave_suspect_pairs_out(workdir):
    _, lines, _ = scripted(workdir, [RIGHT, WRONG], records=1, fallback="gold")  # a sound gold: one pair
    pairs = workdir / "pairs.jsonl"
    suspect = {**lines[0], "instruction": "q9", "gold_suspect": True, "gold_suspect_detail": "gold fails: x"}
    with open(pairs, "ab") as handle:
        handle.write(orjson.dumps(suspect) + b"\n")
    run_cli(["export", str(pairs), "--format", "rewards", "--to", str(workdir / "rewards")])
    rows = read_jsonl(workdir / "rewards" / "pairs.jsonl")
    assert {row["gold_suspect"] for row in rows} == {False, True}
    result = run_cli(["export", str(pairs), "--format", "trl", "--to", str(workdir / "trl"), "--skip-suspect"])
    assert "Skipped 1 rows: gold suspect (--skip-suspect)" in result.output
    assert len(read_jsonl(workdir / "trl" / "pairs.jsonl")) == 1


def test_generate_says_how_many_golds_it_checked(workdir, tiny_model, sample_data):
    from conftest import generate_args

    out = workdir / "pairs.jsonl"
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=2, db_root=DB_ROOT))
    assert "Golds    2 checked, 0 suspect" in result.output
    # the summary is read on the run's own connection: no WAL file is left beside the ledger
    assert not list(workdir.glob("*-wal")) and not list(workdir.glob("*-shm"))
