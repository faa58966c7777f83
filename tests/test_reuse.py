"""--reuse-answers: a re-judged run takes its answers from an earlier run's ledger (issue 17)."""

import orjson
import pytest
from conftest import (
    DB_ROOT,
    FAILS,
    GOLD,
    RIGHT,
    WRONG,
    ScriptedEngine,
    assert_ledger_agrees_with_file,
    generate_args,
    query,
    read_jsonl,
    run,
    run_cli,
    write_records,
)

import prefgen.engines
from prefgen.config import GenerateConfig
from prefgen.run import generate


def fail_to_load(cfg):
    raise AssertionError("the model was loaded although every answer was reused")


@pytest.mark.parametrize("change", [{"dedup_rejects": "exact"}, {"num_rejects": 3}])
def test_a_rejudged_run_is_byte_identical_to_a_fresh_one(workdir, tiny_model, sample_data, change, monkeypatch):
    old, fresh, new = workdir / "old.jsonl", workdir / "fresh.jsonl", workdir / "new.jsonl"
    run_cli(generate_args(tiny_model, sample_data, old, max_samples=4))
    run_cli(generate_args(tiny_model, sample_data, fresh, max_samples=4, **change))
    if "num_rejects" not in change:
        monkeypatch.setattr(prefgen.engines, "load_engine", fail_to_load)
    result = run_cli(generate_args(tiny_model, sample_data, new, max_samples=4, reuse_answers=old, **change))
    assert new.read_bytes() == fresh.read_bytes()
    columns = "sample_index, reject_index, status, raw_answer, new_tokens"
    sql = f"select {columns} from units order by sample_index, reject_index"
    assert query(str(new) + ".ledger.sqlite", sql) == query(str(fresh) + ".ledger.sqlite", sql)
    sources = query(str(new) + ".ledger.sqlite", "select source, count(*) as n from units group by source")
    reused, generated = (8, 0) if "num_rejects" not in change else (8, 4)
    assert {row["source"]: row["n"] for row in sources} == {"reused": reused, **({"generated": 4} if generated else {})}
    assert f"Answers  {reused} reused from an earlier run, {generated} generated;" in result.output
    status = orjson.loads(run_cli(["ledger", "status", str(new) + ".ledger.sqlite", "--json"]).output)
    saved = query(str(old) + ".ledger.sqlite", "select sum(gen_seconds) as s from units")[0]["s"]
    assert status["answers"] == {"generated": generated, "reused": reused, "saved_gpu_s": round(saved, 3)}
    assert "Answers  " in run_cli(["ledger", "status", str(new) + ".ledger.sqlite"]).output


def test_answers_of_another_generation_are_refused_by_name(workdir, tiny_model, sample_data):
    old, new = workdir / "old.jsonl", workdir / "new.jsonl"
    run_cli(generate_args(tiny_model, sample_data, old, max_samples=2))
    result = run_cli(generate_args(tiny_model, sample_data, new, max_samples=2, seed=9, reuse_answers=old), expect=1)
    assert "were generated otherwise" in result.output and "seed" in result.output


def scripted_run(workdir, name, engine, **settings):
    data = write_records(
        workdir / "data.json",
        [{"instruction": f"q{i}", "output": GOLD, "db_id": "department_store"} for i in range(3)],
    )
    out = workdir / name
    options = dict(num_rejects=3, device="cpu", batch_size=2, seed=5)
    cfg = GenerateConfig(base_model="scripted", sft_data=str(data), output=str(out), **{**options, **settings})
    generate(cfg, ["test"], show_progress=False, engine=engine)
    return out


ANSWERS = [RIGHT, WRONG, FAILS]


@pytest.mark.parametrize(
    "before, after",
    [
        ({"db_root": str(DB_ROOT)}, {"db_root": str(DB_ROOT), "pairs": "onpolicy"}),  # gold pairs -> on-policy
        ({}, {"db_root": str(DB_ROOT)}),  # no --db-root -> with
    ],
)
def test_judging_changed_on_executed_answers_is_a_fresh_runs_bytes(workdir, monkeypatch, before, after):
    script = ScriptedEngine(lambda sample, attempt: ANSWERS[(sample + attempt) % 3])
    old = scripted_run(workdir, "old.jsonl", script, **before)
    fresh = scripted_run(workdir, "fresh.jsonl", ScriptedEngine(lambda s, a: ANSWERS[(s + a) % 3]), **after)
    monkeypatch.setattr(prefgen.engines, "load_engine", fail_to_load)
    new = scripted_run(workdir, "new.jsonl", None, reuse_answers=str(old), **after)
    assert new.read_bytes() == fresh.read_bytes() and len(read_jsonl(new)) > 0
    assert_ledger_agrees_with_file(new)


def test_a_reusing_run_killed_midway_resumes_to_a_fresh_runs_bytes(workdir, tiny_model, sample_data):
    old, fresh, new = workdir / "old.jsonl", workdir / "fresh.jsonl", workdir / "new.jsonl"
    flags = dict(max_samples=6, batch_size=3, lookahead=1)
    run_cli(generate_args(tiny_model, sample_data, old, **flags))
    run_cli(generate_args(tiny_model, sample_data, fresh, dedup_rejects="exact", **flags))
    args = generate_args(tiny_model, sample_data, new, dedup_rejects="exact", reuse_answers=old, **flags)
    code, _ = run(args, fault="after_commit:kill@2")
    assert code == -9 and 0 < len(read_jsonl(new)) < len(read_jsonl(fresh))
    code, output = run(args)
    assert code == 0, output
    assert new.read_bytes() == fresh.read_bytes()
    assert_ledger_agrees_with_file(new)
    assert {row["source"] for row in query(str(new) + ".ledger.sqlite", "select source from units")} == {"reused"}
