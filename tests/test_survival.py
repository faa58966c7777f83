"""Survive anything: faults at every dangerous moment, signals, OOM, two writers, disk trouble."""

import os
import signal
import sqlite3
import time

import orjson
import pytest
from conftest import (
    ROOT,
    assert_ledger_agrees_with_file,
    generate_args,
    ledger_units,
    query,
    read_jsonl,
    run,
    run_cli,
    start,
    write_records,
)


@pytest.fixture
def reference(workdir, tiny_model, sample_data):
    """An uninterrupted run of the command the tests interrupt."""

    def make(**flags):
        out = workdir / "reference.jsonl"
        run_cli(generate_args(tiny_model, sample_data, out, **flags))
        return out.read_bytes()

    return make


# --overlap: the path GPUs take (commit while the next batch generates), the riskier one
FLAGS = dict(num_rejects=3, max_samples=6, batch_size=4, max_new_tokens=12, dedup_rejects=True, overlap=True)


# `make test` keeps one kill point, a torn line on the overlapped path; `make check` runs them all
@pytest.mark.parametrize(
    "point",
    [
        pytest.param("after_ledger_open", marks=pytest.mark.slow),
        pytest.param("mid_model_load", marks=pytest.mark.slow),
        pytest.param("after_model_load", marks=pytest.mark.slow),
        pytest.param("before_generate@2", marks=pytest.mark.slow),
        "mid_jsonl_write@2",
        pytest.param("after_jsonl_write@2", marks=pytest.mark.slow),
        pytest.param("after_commit@2", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("overlap", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_kill_at_each_fault_point_then_resume(workdir, tiny_model, sample_data, reference, point, overlap):
    flags = {**FLAGS, "overlap": overlap}
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, **flags)
    name, _, nth = point.partition("@")
    code, _ = run(args, fault=f"{name}:kill" + (f"@{nth}" if nth else ""))
    assert code == -signal.SIGKILL
    if name == "mid_jsonl_write":
        assert not out.read_bytes().endswith(b"\n"), "the kill should have left a torn line"
    code, output = run(args)
    assert code == 0, output
    if name in ("mid_jsonl_write", "after_jsonl_write"):
        assert "discarding" in output and "uncommitted bytes" in output
    assert out.read_bytes() == reference(**flags)
    assert_ledger_agrees_with_file(out)


def kill_mid_run(process, out, rng) -> None:
    """SIGKILL once this process has written something, after a further random pause."""
    size = out.stat().st_size if out.exists() else 0
    deadline = time.time() + 60
    while process.poll() is None and time.time() < deadline:
        if out.exists() and out.stat().st_size != size:
            time.sleep(rng.uniform(0, 0.1))
            break
        time.sleep(0.01)
    process.kill()


DB_ROOT = str(ROOT / "examples" / "spider_en" / "db")


@pytest.mark.slow
@pytest.mark.parametrize(
    "db_root, pairs", [("", "gold"), (DB_ROOT, "gold"), (DB_ROOT, "onpolicy")], ids=["plain", "db-root", "onpolicy"]
)
def test_chaos_kill_9_at_random_moments(workdir, tiny_model, sample_data, reference, db_root, pairs):
    """At least 10 SIGKILLs over one run, at fault points and at random times, then a clean finish;
    with --db-root, kills also land while verdicts are being computed in the worker processes;
    with on-policy pairs (the tiny model is always wrong: the gold is chosen), while a sample's
    pairs are formed from candidates of several batches."""
    import random

    seed = int(os.environ.get("PREFGEN_CHAOS_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    flags = dict(num_rejects=3, max_samples=0, batch_size=2, max_new_tokens=24, dedup_rejects=True, overlap=True)
    flags["db_root"] = db_root or None
    if pairs == "onpolicy":
        flags.update(pairs="onpolicy", fallback="gold")
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, **flags)
    faults = [
        "mid_model_load",
        "after_model_load",
        "mid_jsonl_write",
        "after_jsonl_write",
        "after_commit",
        "before_generate",
    ]
    kills = 0
    for attempt in range(24):
        if attempt % 2 == 0:
            point = rng.choice(faults)
            nth = 1 if "model" in point else rng.randint(1, 3)  # the model loads once per process
            process = start(args, fault=f"{point}:kill@{nth}")
        else:
            process = start(args)
            kill_mid_run(process, out, rng)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode in (0, -signal.SIGKILL), f"seed {seed}: {stderr}"
        kills += process.returncode == -signal.SIGKILL
        if kills >= 12:
            break
    assert kills >= 10, f"only {kills} kills landed (seed {seed})"
    code, output = run(args)
    assert code == 0, f"seed {seed}: {output}"
    assert out.read_bytes() == reference(**flags), f"seed {seed}"
    assert_ledger_agrees_with_file(out)
    units = ledger_units(out)
    assert len(units) == 168 and {u["status"] for u in units} <= {
        "written",
        "duplicate",
        "no_sql",
        "dropped",
        "candidate",
    }
    assert all(bool(u["verdict"]) == bool(db_root) for u in units if u["status"] in ("written", "candidate"))
    if pairs == "onpolicy":
        paired = query(str(out) + ".ledger.sqlite", "select * from paired_samples")
        assert len(paired) == 56 and sum(p["pairs"] for p in paired) == len(read_jsonl(out)) > 56


def test_resume_with_another_batch_size_gives_the_same_text(workdir, tiny_model, sample_data, reference):
    out = workdir / "pairs.jsonl"
    code, _ = run(
        generate_args(tiny_model, sample_data, out, **{**FLAGS, "batch_size": 3}), fault="after_commit:kill@2"
    )
    assert code == -signal.SIGKILL
    run_cli(generate_args(tiny_model, sample_data, out, **{**FLAGS, "batch_size": 7}))
    assert out.read_bytes() == reference(**FLAGS)


def test_oom_halves_the_batch_and_retries_the_same_units(workdir, tiny_model, sample_data, reference, monkeypatch):
    out = workdir / "pairs.jsonl"
    monkeypatch.setenv("PREFGEN_FAULT", "generate:oom>1")
    result = run_cli(generate_args(tiny_model, sample_data, out, **FLAGS))
    assert "Warning: out of memory with 4 rows: retrying as batches of 2" in result.output
    assert out.read_bytes() == reference(**FLAGS)
    conn = sqlite3.connect(str(out) + ".ledger.sqlite")
    backoffs = [orjson.loads(d) for (d,) in conn.execute("select detail from events where kind = 'oom_backoff'")]
    conn.close()
    # 18 units in batches of 4,4,4,4,2: each 4 -> 2+2 -> 1+1+1+1 (3 backoffs), the 2 -> 1+1 (1)
    assert len(backoffs) == 4 * 3 + 1
    assert backoffs[0] == {"rows": 4, "retry_rows": 2}


def test_a_unit_that_does_not_fit_alone_is_recorded_and_retried_next_run(workdir, tiny_model, sample_data, monkeypatch):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, num_rejects=2, max_samples=2, batch_size=2)
    monkeypatch.setenv("PREFGEN_FAULT", "generate:oom>0")
    result = run_cli(args, expect=3)
    assert "run the same command again to retry them" in result.output
    units = ledger_units(out)
    assert [u["status"] for u in units] == ["oom"] * 4
    assert all(u["prompt_tokens"] > 500 and u["raw_answer"] is None for u in units)
    assert out.read_bytes() == b""
    monkeypatch.delenv("PREFGEN_FAULT")
    result = run_cli(args)
    assert "Generated 4 units; 4/4 done" in result.output
    assert [u["status"] for u in ledger_units(out)] == ["written"] * 4


@pytest.mark.parametrize("action, code", [("sigterm", 143), pytest.param("sigint", 130, marks=pytest.mark.slow)])
def test_signal_stops_at_the_batch_boundary_after_committing(workdir, tiny_model, sample_data, reference, action, code):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, **FLAGS)
    returncode, output = run(args, fault=f"before_generate:{action}@2")
    assert returncode == code, output
    assert "Run the same command again to resume" in output
    # the batch in flight when the signal came was finished and committed: 2 batches of 4
    assert len(ledger_units(out)) == 8
    assert_ledger_agrees_with_file(out)
    conn = sqlite3.connect(str(out) + ".ledger.sqlite")
    assert conn.execute("select status from runs").fetchall() == [("interrupted",)]
    conn.close()
    assert run(args)[0] == 0
    assert out.read_bytes() == reference(**FLAGS)


@pytest.mark.slow
def test_a_second_signal_stops_at_once_and_safely(workdir, tiny_model, sample_data, reference):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, **FLAGS)
    returncode, output = run(args, fault="after_jsonl_write:sigint2@2")
    assert returncode == 130, output
    assert "stopped at once by a second SIGINT" in output
    # the second batch's lines were written but not committed: they were rolled back
    assert len(ledger_units(out)) == 4
    assert_ledger_agrees_with_file(out)
    assert run(args)[0] == 0
    assert out.read_bytes() == reference(**FLAGS)


@pytest.mark.parametrize("same", ["ledger", "output"])
def test_a_second_writer_is_refused_naming_the_first(workdir, tiny_model, sample_data, same):
    out = workdir / "pairs.jsonl"
    first = start(generate_args(tiny_model, sample_data, out, **FLAGS), fault="after_model_load:sleep")
    try:
        deadline = time.time() + 120
        lock = workdir / ("pairs.jsonl.ledger.sqlite.lock" if same == "ledger" else "pairs.jsonl.lock")
        while time.time() < deadline and str(first.pid).encode() not in (lock.read_bytes() if lock.exists() else b""):
            time.sleep(0.2)
        if same == "ledger":
            second = generate_args(tiny_model, sample_data, workdir / "other.jsonl", **FLAGS)
            second += ["--ledger", str(out) + ".ledger.sqlite"]
        else:
            second = generate_args(tiny_model, sample_data, out, **FLAGS) + ["--ledger", str(workdir / "other.sqlite")]
        started = time.time()
        result = run_cli(second, expect=1)
        assert time.time() - started < 5
        assert "is in use by another prefgen process" in result.output
        assert f"pid {first.pid}" in result.output
    finally:
        first.kill()
        first.communicate()


@pytest.mark.parametrize(
    "fault, message",
    [("mid_jsonl_write:enospc@2", "No space left on device"), ("mid_jsonl_write:eio@1", "Input/output error")],
)
def test_write_errors_leave_a_resumable_state(workdir, tiny_model, sample_data, reference, monkeypatch, fault, message):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, **FLAGS)
    monkeypatch.setenv("PREFGEN_FAULT", fault)
    result = run_cli(args, expect=1)
    assert result.output.startswith(f"Error: cannot write to {out}: {message}")
    assert "run the same command again" in result.output
    assert_ledger_agrees_with_file(out) if out.stat().st_size else None
    monkeypatch.delenv("PREFGEN_FAULT")
    run_cli(args)
    assert out.read_bytes() == reference(**FLAGS)


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_output_changed_behind_prefgens_back_is_refused_and_repaired(
    workdir, tiny_model, sample_data, reference, damage
):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, **{**FLAGS, "max_samples": 3})
    run_cli(args)
    good = out.read_bytes()
    if damage == "truncate":
        out.write_bytes(good[: len(good) // 2])
    elif damage == "edit":
        out.write_bytes(good.replace(b'"rejected":"', b'"rejected":"X', 1))
    else:
        out.unlink()
    result = run_cli(generate_args(tiny_model, sample_data, out, **FLAGS), expect=1)
    assert result.output.startswith("Error: ") and "prefgen repair --output" in result.output
    assert "behind prefgen's back" in result.output
    result = run_cli(["repair", "--output", str(out)])
    assert f"Rebuilt {out} from the ledger: 9 lines." in result.output
    assert out.read_bytes() == good
    run_cli(generate_args(tiny_model, sample_data, out, **FLAGS))
    # extended from 3 to 6 samples: the same lines, in another order (grouping windows)
    assert sorted(out.read_bytes().splitlines()) == sorted(reference(**FLAGS).splitlines())


def test_repair_keeps_what_the_file_held_before_prefgen(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    out.write_bytes(b'{"from": "an older script"}\n')
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2))
    good = out.read_bytes()
    assert good.startswith(b'{"from": "an older script"}\n') and len(read_jsonl(out)) == 5
    out.write_bytes(good[:40])
    run_cli(["repair", "--output", str(out)])
    assert out.read_bytes() == good


def test_changed_record_is_refused_by_index_and_appended_records_are_fine(workdir, tiny_model):
    records = [{"instruction": f"Question {i}?", "input": "", "output": f"SELECT {i}"} for i in range(4)]
    data = write_records(workdir / "data.jsonl", records, jsonl=True)
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, data, out, max_samples=0))
    write_records(data, records + [{"instruction": "New?", "output": "SELECT 99"}], jsonl=True)
    result = run_cli(generate_args(tiny_model, data, out, max_samples=0))
    assert "Generated 2 units; 10/10 done" in result.output
    records[2]["output"] = "SELECT 2 -- changed"
    write_records(data, records + [{"instruction": "New?", "output": "SELECT 99"}], jsonl=True)
    before = out.read_bytes()
    result = run_cli(generate_args(tiny_model, data, out, max_samples=0), expect=1)
    assert "Error: record 2 of the data file has changed since the ledger recorded it" in result.output
    assert out.read_bytes() == before
