"""`prefgen ledger ...`, the ledger's views and schema, and --config files."""

import sqlite3
import time

import orjson
import pytest
from conftest import ROOT, generate_args, query, read_jsonl, run, run_cli, start

STATUS_KEYS = {
    "ledger",
    "units",
    "samples",
    "lines_written",
    "tokens",
    "answers",
    "golds",
    "throughput",
    "eta_s",
    "last_update",
    "runs",
    "last_error",
    "settings",
    "pairs",
}


@pytest.fixture
def partial_run(workdir, tiny_model, sample_data):
    """A run of 6 samples x 2 rejects killed after 2 batches of 3 units: 3 samples complete."""
    out = workdir / "pairs.jsonl"
    flags = dict(num_rejects=2, max_samples=6, batch_size=3, max_new_tokens=8, lookahead=1)  # sample order
    code, _ = run(generate_args(tiny_model, sample_data, out, **flags), fault="after_commit:kill@2")
    assert code == -9
    return out, str(out) + ".ledger.sqlite", flags


def test_status_figures_match_the_ledger_and_the_jsonl(partial_run):
    out, ledger, _ = partial_run
    data = orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)
    assert set(data) == STATUS_KEYS
    assert set(data["units"]) == {"total", "done", "remaining", "failed", "by_status", "by_verdict"}
    assert set(data["samples"]) == {"total", "complete", "partial", "pending"}
    assert data["pairs"] == {"mode": "gold"}
    assert data["golds"] is None  # no --db-root: golds not checked
    assert set(data["throughput"]) == {
        "units_per_s",
        "tokens_per_s",
        "recent_minutes",
        "recent_units_per_s",
        "recent_tokens_per_s",
    }
    units = query(ledger, "select * from units")
    assert data["units"] == {
        "total": 12,
        "done": 6,
        "remaining": 6,
        "failed": 0,
        "by_status": {"written": 6},
        "by_verdict": {},
    }
    assert data["samples"] == {"total": 6, "complete": 3, "partial": 0, "pending": 3}
    assert data["lines_written"] == len(read_jsonl(out)) == 6
    assert data["tokens"] == {
        "generated": sum(u["new_tokens"] for u in units),
        "prompt": sum(u["prompt_tokens"] for u in units),
    }
    # killed: its row still says running, but its lock is free: shown crashed, with no ETA
    assert query(ledger, "select status from runs") == [{"status": "running"}]
    assert [(r["status"], r["stop_reason"]) for r in data["runs"]] == [("crashed", "the process died")]
    assert data["runs"][0]["units_done"] == 6 and data["eta_s"] is None
    assert data["settings"]["batch_size"] == 3


def test_status_after_resume_shows_partial_samples_and_history(partial_run, tiny_model, sample_data):
    out, ledger, flags = partial_run
    code, _ = run(
        generate_args(tiny_model, sample_data, out, **{**flags, "batch_size": 5}), fault="after_commit:kill@1"
    )
    assert code == -9
    data = orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)
    assert data["samples"] == {"total": 6, "complete": 5, "partial": 1, "pending": 0}
    assert [r["status"] for r in data["runs"]] == ["crashed", "crashed"]  # the second killed too
    text = run_cli(["ledger", "status", ledger]).output
    assert "Units    11 / 12 done (91.7%), 0 to retry" in text
    assert "Samples  5 complete, 1 partial, 0 pending (of 6)" in text
    assert "crashed: the process died" in text
    assert all(len(line) <= 80 for line in text.splitlines() if not line.startswith("Ledger"))


def test_show_lists_every_unit_of_a_sample(partial_run):
    _, ledger, _ = partial_run
    units = query(ledger, "select * from units where sample_index = 1 order by reject_index")
    text = run_cli(["ledger", "show", ledger, "1"]).output
    assert text.startswith("Sample 1: 2 units")
    for unit in units:
        assert f"- reject {unit['reject_index']}  seed {unit['seed']}  status written" in text
        assert f"  sql: {unit['sql']}" in text
    assert run_cli(["ledger", "show", ledger, "5"]).output.strip() == "Sample 5: no units in the ledger."


def test_failures_and_retry(workdir, tiny_model, sample_data, monkeypatch):
    out = workdir / "pairs.jsonl"
    ledger = str(out) + ".ledger.sqlite"
    args = generate_args(tiny_model, sample_data, out, num_rejects=2, max_samples=3, batch_size=2)
    monkeypatch.setenv("PREFGEN_FAULT", "generate:oom>1")
    run_cli(args)
    monkeypatch.setenv("PREFGEN_FAULT", "generate:oom>0")
    run_cli(["ledger", "retry", ledger, "--status", "oom"])  # nothing to retry yet
    assert run_cli(["ledger", "failures", ledger]).output.strip() == "No failed units."
    monkeypatch.delenv("PREFGEN_FAULT")
    conn = sqlite3.connect(ledger)
    conn.execute("update units set status = 'oom', detail = 'did not fit in memory alone' where sample_index in (0, 2)")
    conn.commit()
    conn.close()
    text = run_cli(["ledger", "failures", ledger]).output
    assert "oom: did not fit in memory alone (4 units)" in text and "samples: 0,2" in text
    result = run_cli(["ledger", "retry", ledger, "--status", "oom"])
    assert "Marked 4 units for retry" in result.output
    events = query(ledger, "select detail from events where kind = 'retry_marked'")
    assert orjson.loads(events[-1]["detail"]) == {"statuses": ["oom"], "units": 4}
    result = run_cli(args)
    assert "Generated 4 units; 6/6 done" in result.output
    refused = run_cli(["ledger", "retry", ledger, "--status", "written"], expect=1)
    assert "Error: cannot retry units in status written" in refused.output


def test_views_make_queries_one_line(partial_run):
    _, ledger, _ = partial_run
    assert query(
        ledger, "select units_total, units_done, samples_total, samples_complete, lines_written from progress"
    ) == [{"units_total": 12, "units_done": 6, "samples_total": 6, "samples_complete": 3, "lines_written": 6}]
    rows = query(ledger, "select sample_index, units, written from sample_progress order by sample_index")
    assert rows == [{"sample_index": i, "units": 2, "written": 2} for i in range(3)]
    history = query(ledger, "select id, status, units_done, oom_backoffs from run_history")
    assert history == [{"id": 1, "status": "running", "units_done": 6, "oom_backoffs": 0}]


def test_ledger_schema(partial_run):
    import sqlite_utils

    db = sqlite_utils.Database(partial_run[1])
    assert db["units"].columns_dict == {
        "sample_index": int,
        "reject_index": int,
        "seed": int,
        "status": str,
        "detail": str,
        "record_hash": str,
        "raw_answer": str,
        "sql": str,
        "prompt_tokens": int,
        "new_tokens": int,
        "gen_seconds": float,
        "run_id": int,
        "updated_at": str,
        "line_offset": int,
        "line_length": int,
        "line": str,
        "verdict": str,
        "verdict_detail": str,
        "multiset_differs": int,
        "order_differs": int,
        "role": str,
        "reward": float,
        "spider_correct": int,
        "bird_correct": int,
        "result_digest": str,
        "source": str,
        "variant": int,
        "truncated": int,
    }
    assert db["units"].pks == ["sample_index", "reject_index"]
    assert db["samples"].columns_dict == {
        "sample_index": int,
        "db": str,
        "instruction": str,
        "input": str,
        "gold": str,
        "gold_suspect": int,
        "suspect_detail": str,
    }
    assert set(db["pairs"].columns_dict) >= {"sample_index", "pair_index", "chosen_source", "line"}
    assert set(db.view_names()) == {
        "progress",
        "sample_progress",
        "run_history",
        "speed",
        "progress_over_time",
        "outcomes_by_database",
        "failures",
        "pair_lines",
    }
    assert [r["name"] for r in db["_prefgen_migrations"].rows] == [
        "m001_initial",
        "m002_views",
        "m003_same_as_gold",
        "m004_verdicts",
        "m005_onpolicy_pairs",
        "m006_browse",
        "m007_evaluators",
        "m008_rewards",
        "m009_variants",
        "m010_answer_source",
        "m011_gold_suspect",
        "m012_truncated",
    ]


def test_status_while_a_run_writes_is_consistent_and_does_not_block(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    ledger = str(out) + ".ledger.sqlite"
    process = start(
        generate_args(tiny_model, sample_data, out, num_rejects=2, max_samples=6, batch_size=2, overlap=True),
        fault="before_generate:sleep@4",  # batches 1 and 2 committed, batch 3 generating, then a pause
    )
    try:
        # the lines reach the file just before their units reach the ledger: wait for both
        deadline = time.time() + 120
        while time.time() < deadline and not (
            out.exists()
            and len(read_jsonl(out)) == 4
            and query(ledger, "select count(*) as n from units") == [{"n": 4}]
        ):
            time.sleep(0.2)
        started = time.time()
        data = orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)
        assert time.time() - started < 5
        assert data["units"]["done"] == 4 == data["lines_written"] == len(read_jsonl(out))
        assert data["runs"][-1]["status"] == "running"
    finally:
        process.kill()
        process.communicate()


def test_not_a_ledger_and_a_newer_ledger_are_clear_errors(workdir, partial_run):
    (workdir / "notes.txt").write_text("hello")
    result = run_cli(["ledger", "status", str(workdir / "notes.txt")], expect=1)
    assert result.output.startswith("Error: ") and "is neither a prefgen ledger nor an output" in result.output
    plain = sqlite3.connect(workdir / "plain.db")
    plain.execute("create table t (x)")
    plain.close()
    assert "is not a prefgen ledger" in run_cli(["ledger", "status", str(workdir / "plain.db")], expect=1).output
    conn = sqlite3.connect(partial_run[1])
    conn.execute("insert into _prefgen_migrations values ('m999_future', 'later')")
    conn.commit()
    conn.close()
    result = run_cli(["ledger", "status", partial_run[1]], expect=1)
    assert "written by a newer prefgen" in result.output and "m999_future" in result.output


def test_config_file_flags_override_and_status_prints_it_back(workdir, tiny_model, sample_data):
    config = workdir / "run.yaml"
    out = workdir / "pairs.jsonl"
    config.write_text(
        f"base-model: {tiny_model}\nsft_data: {sample_data}\noutput: {out}\nnum-rejects: 2\n"
        "max-new-tokens: 8\nmax_samples: 2\ndevice: cpu\ndedup-rejects: true\nbatch-size: 2\n"
    )
    result = run_cli(["generate", "--config", str(config), "--batch-size", "3", "--no-progress"])
    assert "Generated 4 units; 4/4 done" in result.output
    runs = query(str(out) + ".ledger.sqlite", "select settings from runs")
    settings = orjson.loads(runs[0]["settings"])
    assert settings["batch_size"] == 3 and settings["num_rejects"] == 2 and settings["dedup_rejects"] == "exact"
    printed = run_cli(["ledger", "status", str(out) + ".ledger.sqlite", "--as-config"]).output
    (workdir / "again.yaml").write_text(printed)
    assert "batch-size: 3\n" in printed
    result = run_cli(["generate", "--config", str(workdir / "again.yaml"), "--no-progress"])
    assert "Nothing to do: all 4 units are already in the ledger" in result.output


def test_config_file_unknown_key_is_named(workdir):
    config = workdir / "run.yaml"
    config.write_text("base-model: m\nnum_reject: 3\n")
    result = run_cli(["generate", "--config", str(config)], expect=2)
    assert "unknown key 'num_reject'" in result.output


def test_humanized_numbers():
    from prefgen.ledger.inspect import human_duration, human_number

    assert [human_number(x) for x in (0, 5, 0.5, 1234, 2_500_000)] == ["0", "5", "0.50", "1.2k", "2.5M"]
    assert [human_duration(x) for x in (None, 12, 245, 11520, 90000)] == ["-", "12s", "4m05s", "3h12m", "1d01h"]


def test_every_documented_query_runs_on_a_real_ledger(partial_run):
    """docs/ledger.md's "useful queries" stay true to the schema."""
    import re

    page = (ROOT / "docs" / "ledger.md").read_text(encoding="utf-8")
    block = page.split("Ten useful queries", 1)[1].split("```")[1]
    queries = re.findall(r'^(?:sqlite3|sqlite-utils query) \$L "(.+?)"\s*(?:#.*)?$', block, flags=re.M)
    assert len(queries) == 10
    for sql in queries:
        query(partial_run[1], sql)  # raises on any error
