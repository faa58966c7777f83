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
from prefgen.executors import generate


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
    expected = {"generated": generated, "reused": reused, "regenerated": 0, "saved_gpu_s": round(saved, 3)}
    assert status["answers"] == expected
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
    cfg = GenerateConfig.from_flags(
        base_model="scripted", sft_data=str(data), output=str(out), **{**options, **settings}
    )
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


def answers_by_unit(out) -> dict:
    sql = "select sample_index, reject_index, raw_answer, new_tokens, truncated, source from units"
    return {(row["sample_index"], row["reject_index"]): row for row in query(str(out) + ".ledger.sqlite", sql)}


def test_a_larger_cap_regenerates_only_the_units_cut_at_the_smaller_one(workdir, tiny_model, sample_data):
    """The transformers engine's prefix property, units.truncated, and --reuse-answers across a
    raised --max-new-tokens giving a fresh run's bytes; a lowered one is refused."""
    old, fresh, new = workdir / "old.jsonl", workdir / "fresh.jsonl", workdir / "new.jsonl"
    flags = dict(max_samples=12, batch_size=8)
    run_cli(generate_args(tiny_model, sample_data, old, max_new_tokens=12, **flags))
    run_cli(generate_args(tiny_model, sample_data, fresh, max_new_tokens=24, **flags))
    short, long = answers_by_unit(old), answers_by_unit(fresh)
    for key, unit in short.items():  # the first 12 tokens are the same at any cap
        assert long[key]["raw_answer"].startswith(unit["raw_answer"])
        assert unit["truncated"] == (unit["new_tokens"] == 12), unit  # cut at the cap, or ended with EOS
        if not unit["truncated"]:
            assert long[key] == unit
    cut = sum(unit["truncated"] for unit in short.values())
    assert 0 < cut < len(short)
    result = run_cli(generate_args(tiny_model, sample_data, new, max_new_tokens=24, reuse_answers=old, **flags))
    assert new.read_bytes() == fresh.read_bytes()
    after = answers_by_unit(new)
    assert {key: row["source"] for key, row in after.items()} == {
        key: "regenerated" if unit["truncated"] else "reused" for key, unit in short.items()
    }
    assert {key: row["truncated"] for key, row in after.items()} == {key: row["truncated"] for key, row in long.items()}
    reused = len(short) - cut
    line = f"Answers  {reused} reused from an earlier run, {cut} regenerated at a larger cap, 0 generated;"
    assert line in result.output
    answers = orjson.loads(run_cli(["ledger", "status", str(new) + ".ledger.sqlite", "--json"]).output)["answers"]
    assert (answers["reused"], answers["regenerated"], answers["generated"]) == (reused, cut, 0)
    low = workdir / "low.jsonl"
    lower = run_cli(generate_args(tiny_model, sample_data, low, reuse_answers=fresh, **flags), expect=1)
    assert "--max-new-tokens 24" in lower.output and "this run's 8" in lower.output and "lowering" in lower.output


def test_old_answers_are_read_a_few_samples_at_a_time(workdir, tiny_model, sample_data, monkeypatch):
    """A run reusing millions of answers holds only the chunks around the units it answers, and
    lets go of OLD's ledger between reads (OLD's own writer is never kept waiting)."""
    import os
    import shutil

    from prefgen.errors import LedgerError
    from prefgen.ledger.answers import StoredAnswers
    from prefgen.runtime.lock import exclusive

    old, fresh, new = workdir / "old.jsonl", workdir / "fresh.jsonl", workdir / "new.jsonl"
    run_cli(generate_args(tiny_model, sample_data, old, max_samples=6))
    run_cli(generate_args(tiny_model, sample_data, fresh, max_samples=6, dedup_rejects="exact"))
    reads = []
    monkeypatch.setattr(StoredAnswers, "CHUNK", 2)
    monkeypatch.setattr(StoredAnswers, "CACHE", 1)
    real_read = StoredAnswers.read
    monkeypatch.setattr(StoredAnswers, "read", lambda self, chunk: reads.append(chunk) or real_read(self, chunk))
    run_cli(generate_args(tiny_model, sample_data, new, max_samples=6, dedup_rejects="exact", reuse_answers=old))
    assert new.read_bytes() == fresh.read_bytes()
    assert sorted(set(reads)) == [0, 1, 2]  # 6 samples, 2 at a time

    ledger = old.parent / (old.name + ".ledger.sqlite")
    stored = StoredAnswers(ledger)
    everything = query(ledger, "select sample_index, reject_index, raw_answer from units order by 1, 2")
    for row in everything:
        assert stored.get((row["sample_index"], row["reject_index"]))["raw_answer"] == row["raw_answer"]
        assert len(stored.chunks) == 1
        with exclusive(ledger):  # no read holds OLD's lock
            pass
    assert stored.get((99, 0)) is None
    assert stored.reads == 4  # chunks 0, 1, 2 once each (units in order), and chunk 49 for sample 99
    # OLD replaced by another file at its path (moved aside, or another run made there): refused
    shutil.copy(ledger, workdir / "copy.sqlite")
    os.replace(workdir / "copy.sqlite", ledger)
    with pytest.raises(LedgerError, match="was moved, removed or replaced during this run"):
        stored.get((0, 0))
