"""Batches bounded in rows and tokens, length grouping, and runs split over processes."""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, generate_args, read_jsonl, run, run_cli

from prefgen.flow.batching import batches
from prefgen.flow.plan import plan_units
from prefgen.units import Record


def units_of(lengths, rejects=2):
    records = [Record(i, {"instruction": "x" * n, "output": "SELECT 1"}, f"h{i}") for i, n in enumerate(lengths)]
    return list(plan_units(records, rejects, seed=0))


def length(unit):
    return len(unit.record.instruction)


def test_rows_bound_without_grouping_keeps_order():
    units = units_of([5, 50, 7])
    got = list(batches(units, batch_size=4))
    assert [len(b) for b in got] == [4, 2]
    assert [u.key for b in got for u in b] == [u.key for u in units]


def test_grouping_sorts_by_prompt_length_within_aligned_windows():
    units = units_of([50, 5, 30, 7, 100, 1], rejects=1)
    got = list(batches(units, batch_size=2, lookahead=4, prompt_length=length))
    assert [[u.sample_index for u in b] for b in got] == [[1, 3], [2, 0], [5, 4]]
    # a resumed run that has done the first batch orders the rest the same way
    rest = [u for u in units if u.sample_index not in (1, 3)]
    again = list(batches(rest, batch_size=2, lookahead=4, prompt_length=length))
    assert [[u.sample_index for u in b] for b in again] == [[2, 0], [5, 4]]


def test_token_bound_counts_rows_times_the_longest_row():
    units = units_of([10, 10, 100, 10], rejects=1)
    got = list(batches(units, batch_size=8, max_batch_tokens=60, prompt_length=length, max_new_tokens=10))
    # 2 rows x 20 = 40 fits, 3 x 20 = 60 fits, then the 110-token row alone exceeds it
    assert [[u.sample_index for u in b] for b in got] == [[0, 1], [2], [3]]
    assert all(len(b) == 1 for b in batches(units, 8, max_batch_tokens=1, prompt_length=length))


def test_token_bounded_grouped_run_writes_the_same_text(workdir, tiny_model, sample_data):
    plain, bounded = workdir / "plain.jsonl", workdir / "bounded.jsonl"
    run_cli(generate_args(tiny_model, sample_data, plain, max_samples=6, lookahead=1))
    result = run_cli(
        generate_args(tiny_model, sample_data, bounded, max_samples=6, batch_size=8, max_batch_tokens=3500, lookahead=4)
    )
    assert "Generated 12 units; 12/12 done" in result.output
    assert sorted(plain.read_bytes().splitlines()) == sorted(bounded.read_bytes().splitlines())
    # lookahead 1: sample order
    assert [(line["sample_index"], line["reject_index"]) for line in read_jsonl(plain)] == [
        (s, r) for s in range(6) for r in range(2)
    ]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_two_ranks_then_merge_equals_a_single_process_run(workdir, tiny_model, sample_data):
    single, split = workdir / "single.jsonl", workdir / "split.jsonl"
    flags = dict(num_rejects=2, max_samples=7, dedup_rejects=True)
    run_cli(generate_args(tiny_model, sample_data, single, **flags))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "prefgen", *generate_args(tiny_model, sample_data, split, **flags)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(workdir / "split.rank0-of-2.jsonl")) == 8  # samples 0, 2, 4, 6
    assert len(read_jsonl(workdir / "split.rank1-of-2.jsonl")) == 6  # samples 1, 3, 5
    result = run_cli(["merge", "--output", str(split), "--world-size", "2"])
    assert "Merged 2 parts" in result.output and "14 lines" in result.output
    merged = split.read_bytes().splitlines()
    assert sorted(merged) == sorted(single.read_bytes().splitlines())
    keys = [(line["sample_index"], line["reject_index"]) for line in read_jsonl(split)]
    assert keys == sorted(keys)


def test_a_dead_rank_is_resumed_alone_and_merge_refuses_incomplete_or_missing_parts(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    flags = dict(num_rejects=2, max_samples=7, world_size=2, batch_size=2)
    result = run_cli(["merge", "--output", str(out), "--world-size", "2"], expect=1)
    assert "part 0 of 2 is missing" in result.output
    run_cli(generate_args(tiny_model, sample_data, out, rank=0, **flags))
    code, _ = run(generate_args(tiny_model, sample_data, out, rank=1, **flags), fault="after_commit:kill@1")
    assert code == -9
    result = run_cli(["merge", "--output", str(out), "--world-size", "2"], expect=1)
    assert "part 1 of 2 is incomplete: 2 of 6 units done" in result.output
    assert not out.exists()
    result = run_cli(generate_args(tiny_model, sample_data, out, rank=1, **flags))
    assert "Generated 4 units; 6/6 done" in result.output
    assert "14 lines" in run_cli(["merge", "--output", str(out), "--world-size", "2"]).output
    assert "already exists" in run_cli(["merge", "--output", str(out), "--world-size", "2"], expect=1).output


def test_batch_size_auto_probes_the_largest_size_that_fits(workdir, tiny_model, sample_data, monkeypatch):
    import sqlite3

    import orjson

    out = workdir / "pairs.jsonl"
    monkeypatch.setenv("PREFGEN_FAULT", "generate:oom>12")  # more than 12 rows do not fit
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=10, batch_size="auto"))
    assert "--batch-size auto: 8 rows fit" in result.output
    assert "Generated 20 units; 20/20 done" in result.output
    conn = sqlite3.connect(str(out) + ".ledger.sqlite")
    events = [(k, orjson.loads(d)) for k, d in conn.execute("select kind, detail from events")]
    conn.close()
    assert (
        "batch_size_auto",
        {"rows": 8, "prompt_tokens": max(d.get("prompt_tokens", 0) for _, d in events)},
    ) in events
    assert not any(kind == "oom_backoff" for kind, _ in events)


def test_batch_size_auto_on_cpu_stops_at_its_limit(workdir, tiny_model, sample_data):
    result = run_cli(generate_args(tiny_model, sample_data, workdir / "p.jsonl", max_samples=2, batch_size="auto"))
    assert "--batch-size auto: 64 rows fit" in result.output


def test_auto_batch_size_shrinks_after_an_oom_backoff():
    from prefgen.executors.local import BatchRows

    class Ledger:
        events = []

        def record_event(self, kind, detail):
            self.events.append((kind, detail))

    for size, expected in (("auto", 4), (16, 16)):
        ledger = Ledger()
        rows = BatchRows(ledger, 16 if size == 16 else 8, auto=size == "auto")
        rows.backoff(8, 4)
        assert rows() == expected
        lowered = {"batch_size": 4} if size == "auto" else {}
        assert ledger.events[-1] == ("oom_backoff", {"rows": 8, "retry_rows": 4, **lowered})
