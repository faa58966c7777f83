"""Graded labels: each candidate's execution reward in the ledger, and the kto and rewards exports."""

from collections import Counter

import orjson
import pytest
from conftest import DB_ROOT, FAILS, RIGHT_TOO, WRONG, generate_args, query, read_jsonl, run_cli, scripted

from prefgen.config import EXECUTION_REWARDS, execution_reward

# right under every evaluator (the scripted runs' gold: product_name, product_price over 900)
RIGHT = "SELECT product_name, product_price FROM products WHERE 900 < product_price"


def test_the_reward_of_each_verdict_is_arctic_text2sql_r1s_execution_reward():
    assert [execution_reward(v) for v in ("equivalent", "wrong_result", "exec_error", "timeout")] == [1.0, 0.1, 0, 0]
    assert execution_reward("unverifiable") is None and execution_reward(None) is None
    assert set(EXECUTION_REWARDS) == {"equivalent", "wrong_result", "exec_error", "timeout"}


def test_each_judged_candidate_has_its_reward_in_the_ledger(workdir):
    _, lines, ledger = scripted(workdir, [RIGHT, WRONG, RIGHT_TOO, FAILS], records=2, num_rejects=4)
    rows = query(ledger, "select sample_index, reject_index, verdict, reward from units order by 1, 2")
    assert [(r["verdict"], r["reward"]) for r in rows] == 2 * [
        ("equivalent", 1.0),
        ("wrong_result", 0.1),
        ("equivalent", 1.0),
        ("exec_error", 0.0),
    ]
    assert lines


def test_units_without_a_verdict_have_no_reward(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2))
    rewards = query(str(out) + ".ledger.sqlite", "select verdict, reward from units")
    assert rewards and all(r["verdict"] is None and r["reward"] is None for r in rewards)


def export(pairs, fmt, directory, *flags):
    result = run_cli(["export", str(pairs), "--format", fmt, "--to", str(directory), *flags])
    return result.output, read_jsonl(directory / "pairs.jsonl")


def content(row):
    return row["completion"][0]["content"]


def test_kto_export_of_onpolicy_pairs_labels_each_side_once(workdir):
    _, lines, _ = scripted(workdir, [RIGHT, WRONG, RIGHT_TOO, FAILS], records=2, num_rejects=4)
    pairs = workdir / "pairs.jsonl"
    output, rows = export(pairs, "kto", workdir / "kto")
    # each sample: two right answers (chosen) paired with two wrong ones (rejected), each once
    assert len(lines) == 4 and len(rows) == 8
    assert output == f"Wrote 8 rows to {workdir / 'kto' / 'pairs.jsonl'}\n"
    assert Counter((content(r), r["label"]) for r in rows) == Counter(
        {(RIGHT, True): 2, (RIGHT_TOO, True): 2, (WRONG, False): 2, (FAILS, False): 2}
    )
    assert all(set(r) == {"prompt", "completion", "label"} and r["completion"][0]["role"] == "assistant" for r in rows)
    # the prompt is the trl export's, each pair's chosen and rejected turned into two rows
    _, trl = export(pairs, "trl", workdir / "trl")
    assert {orjson.dumps(r["prompt"]) for r in rows} == {orjson.dumps(r["prompt"]) for r in trl}
    labelled = {(orjson.dumps(r["prompt"]), content(r)): r["label"] for r in rows}
    for row in trl:
        assert labelled[orjson.dumps(row["prompt"]), row["chosen"][0]["content"]] is True
        assert labelled[orjson.dumps(row["prompt"]), row["rejected"][0]["content"]] is False


def test_rewards_export_grades_each_side_as_the_ledger_does(workdir):
    _, lines, ledger = scripted(workdir, [RIGHT, WRONG, RIGHT_TOO, FAILS], records=2, num_rejects=4)
    output, rows = export(workdir / "pairs.jsonl", "rewards", workdir / "rewards")
    assert output.startswith("Wrote 8 rows")
    in_ledger = {r["sql"]: r["reward"] for r in query(ledger, "select sql, reward from units")}
    assert {content(r): r["reward"] for r in rows} == in_ledger == {RIGHT: 1.0, RIGHT_TOO: 1.0, WRONG: 0.1, FAILS: 0.0}
    by_text = {content(r): r for r in rows}
    assert by_text[RIGHT]["verdicts"] == {"execution": "equivalent"} and by_text[RIGHT]["source"] == "model"
    details = {r["sql"]: r["verdict_detail"] for r in query(ledger, "select sql, verdict_detail from units")}
    assert by_text[WRONG]["verdicts"] == {"execution": "wrong_result", "detail": details[WRONG]}
    assert by_text[FAILS]["verdicts"] == {"execution": "exec_error", "detail": details[FAILS]}
    assert "no_such_column" in details[FAILS]


@pytest.fixture
def gold_pairs(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=3, num_rejects=2, db_root=str(DB_ROOT)))
    return out


def test_gold_mode_exports_the_gold_once_with_reward_1(workdir, gold_pairs):
    lines = read_jsonl(gold_pairs)
    golds = {line["chosen"] for line in lines}
    output, kto = export(gold_pairs, "kto", workdir / "kto")
    assert f"Skipped {2 * len(lines) - len(kto)} rows: already written (same prompt and completion)" in output
    first_lines = list({line["sample_index"]: line for line in reversed(lines)}.values())[::-1]
    assert [content(r) for r in kto if r["label"]] == [line["chosen"] for line in first_lines]
    assert len([r for r in kto if not r["label"]]) == len({(line["sample_index"], line["rejected"]) for line in lines})
    _, rewards = export(gold_pairs, "rewards", workdir / "rewards")
    gold_rows = [r for r in rewards if r["source"] == "gold"]
    assert {content(r) for r in gold_rows} == golds
    assert all(r["reward"] == 1.0 and r["verdicts"] == {} for r in gold_rows)
    by_verdict = {line["verdict"] for line in lines}
    assert {r["verdicts"]["execution"] for r in rewards if r["source"] == "model"} == by_verdict
    for row in rewards:
        if row["source"] == "model":
            assert row["reward"] == execution_reward(row["verdicts"]["execution"])


def test_rewards_export_skips_and_counts_sides_without_a_verdict(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2, num_rejects=2))
    lines = read_jsonl(out)
    output, rows = export(out, "rewards", workdir / "rewards")
    assert [content(r) for r in rows] == [line["chosen"] for line in lines if line["reject_index"] == 0]
    assert len(rows) == 2 and all(r["reward"] == 1.0 and r["source"] == "gold" for r in rows)
    assert f"Skipped {len(lines)} rows: no verdict, so no reward (run with --db-root)" in output
    _, kto = export(out, "kto", workdir / "kto")
    assert len(kto) == 2 + len({(line["sample_index"], line["rejected"]) for line in lines})
