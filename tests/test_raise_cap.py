"""A larger --max-new-tokens on an existing run: only the answers cut at the old cap are generated
again, and the output is a fresh run's at the larger cap (issue 17); a smaller one is refused."""

import sqlite3

import orjson
import pytest
from conftest import (
    DB_ROOT,
    assert_ledger_agrees_with_file,
    generate_args,
    query,
    read_jsonl,
    run,
    run_cli,
)


def sources(out) -> dict:
    rows = query(str(out) + ".ledger.sqlite", "select source, count(*) as n from units group by source")
    return {row["source"]: row["n"] for row in rows}


def cut_units(out, cap: int) -> int:
    sql = f"select count(*) as n from units where truncated = 1 and new_tokens >= {cap}"
    return query(str(out) + ".ledger.sqlite", sql)[0]["n"]


def test_raising_the_cap_in_place_gives_a_fresh_runs_bytes(workdir, tiny_model, sample_data):
    out, fresh = workdir / "pairs.jsonl", workdir / "fresh.jsonl"
    flags = dict(max_samples=12, batch_size=8)
    run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=12, **flags))
    before, cut = out.read_bytes(), cut_units(out, 12)
    run_cli(generate_args(tiny_model, sample_data, fresh, max_new_tokens=24, **flags))
    result = run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=24, **flags))
    assert out.read_bytes() == fresh.read_bytes() != before
    assert_ledger_agrees_with_file(out)
    assert sources(out) == {"reused": 24 - cut, "regenerated": cut} and 0 < cut < 24
    assert "the run so far is now" in result.output and "pairs.cap12.jsonl" in result.output
    assert (workdir / "pairs.cap12.jsonl").read_bytes() == before  # kept whole, with its ledger
    moved = str(workdir / "pairs.cap12.jsonl.ledger.sqlite")
    assert query(moved, "select value from meta where key = 'output_path'")[0]["value"] == str(
        workdir / "pairs.cap12.jsonl"
    )
    assert not (workdir / "pairs.jsonl.raising.json").exists()
    status = orjson.loads(run_cli(["ledger", "status", str(out), "--json"]).output)
    assert (status["answers"]["reused"], status["answers"]["regenerated"]) == (24 - cut, cut)
    again = run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=24, **flags))
    assert "Nothing to do" in again.output and out.read_bytes() == fresh.read_bytes()
    lower = run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=12, **flags), expect=1)
    assert "made at --max-new-tokens 24: lowering it to 12 is refused" in lower.output
    assert "Hint: run with --max-new-tokens 24" in lower.output
    (workdir / "pairs.cap24.jsonl").write_text("")  # the name a raise to 48 would move the run to
    taken = run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=48, **flags), expect=1)
    assert "pairs.cap24.jsonl already exists" in taken.output and out.read_bytes() == fresh.read_bytes()


KILL_POINTS = ["after_raise_marker", "mid_raise_move", "after_raise_move", "after_ledger_open", "after_commit:kill@2"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault, name", [*((point, "pairs.jsonl") for point in KILL_POINTS), ("mid_raise_move", "pairs.json")]
)
def test_a_raise_killed_anywhere_resumes_to_a_fresh_runs_bytes(workdir, tiny_model, sample_data, fault, name):
    """Every crash point of the move and of the run after it; a .json output's array moves too."""
    out, fresh = workdir / name, workdir / name.replace("pairs", "fresh")
    flags = dict(max_samples=12, batch_size=4, lookahead=1)
    assert run(generate_args(tiny_model, sample_data, out, max_new_tokens=12, **flags))[0] == 0
    before = out.read_bytes()
    journal = workdir / "pairs.journal.jsonl" if name.endswith(".json") else out
    cut = cut_units(out, 12)
    assert run(generate_args(tiny_model, sample_data, fresh, max_new_tokens=24, **flags))[0] == 0
    args = generate_args(tiny_model, sample_data, out, max_new_tokens=24, **flags)
    code, output = run(args, fault=fault)
    assert code == -9, output
    code, output = run(args)
    assert code == 0, output
    assert out.read_bytes() == fresh.read_bytes()
    if journal == out:
        assert_ledger_agrees_with_file(out)
    else:
        assert journal.read_bytes() == (workdir / "fresh.journal.jsonl").read_bytes()
    assert sources(out) == {"reused": 24 - cut, "regenerated": cut}
    assert not (workdir / (journal.name + ".raising.json")).exists()
    moved = workdir / name.replace("pairs", "pairs.cap12")
    assert moved.read_bytes() == before  # the run so far, whole: its own --output at cap 12
    assert "Nothing to do" in run_cli(generate_args(tiny_model, sample_data, moved, max_new_tokens=12, **flags)).output


@pytest.mark.slow
def test_raising_the_cap_of_an_onpolicy_run_reforms_its_pairs(workdir, tiny_model, sample_data):
    out, fresh = workdir / "pairs.jsonl", workdir / "fresh.jsonl"
    flags = dict(max_samples=8, batch_size=8, db_root=DB_ROOT, pairs="onpolicy", fallback="gold")
    run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=12, **flags))
    run_cli(generate_args(tiny_model, sample_data, fresh, max_new_tokens=24, **flags))
    run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=24, **flags))
    assert out.read_bytes() == fresh.read_bytes() and len(read_jsonl(out)) > 0
    assert (workdir / "pairs.cap12.jsonl").read_bytes() != out.read_bytes()  # pairs re-formed
    assert_ledger_agrees_with_file(out)
    assert set(sources(out)) == {"reused", "regenerated"}


@pytest.mark.slow
def test_units_recorded_before_truncated_count_as_cut_when_they_reach_the_cap(workdir, tiny_model, sample_data):
    out, fresh = workdir / "pairs.jsonl", workdir / "fresh.jsonl"
    flags = dict(max_samples=12, batch_size=8)
    run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=12, **flags))
    conn = sqlite3.connect(str(out) + ".ledger.sqlite")
    with conn:
        conn.execute("update units set truncated = null")  # as a ledger made before the column
    conn.close()
    reaching = query(str(out) + ".ledger.sqlite", "select count(*) as n from units where new_tokens >= 12")[0]["n"]
    run_cli(generate_args(tiny_model, sample_data, fresh, max_new_tokens=24, **flags))
    run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=24, **flags))
    assert out.read_bytes() == fresh.read_bytes()
    assert sources(out) == {"reused": 24 - reaching, "regenerated": reaching}
