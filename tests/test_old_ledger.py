"""A ledger made by an older prefgen still reads, browses and resumes.

tests/fixtures/old-ledger holds a run made by prefgen before its package was laid out by concern
(commit 54ca3a6; README.md there says how): killed half-way, its JSONL, ledger and data file.
Read-only it must be read without being written; resumed it must give the same bytes as an
uninterrupted run; and a ledger from any earlier migration must end up with a new one's schema.
"""

import json
import shutil
import sqlite3

import orjson
import pytest
from conftest import (
    DB_ROOT,
    ROOT,
    assert_ledger_agrees_with_file,
    browse_pages,
    generate_args,
    query,
    read_jsonl,
    run_cli,
)

from prefgen.errors import LedgerError
from prefgen.ledger.store import Ledger
from prefgen.ledger.views import VIEWS, stored_views

FIXTURE = ROOT / "tests" / "fixtures" / "old-ledger"
# make.sh's command (its data file has 6 records, so no --max-samples)
FLAGS = dict(num_rejects=2, max_new_tokens=8, batch_size=2, max_samples=None, db_root=DB_ROOT)


def copy_fixture(directory):
    """The fixture's files in `directory`: (data, output, ledger)."""
    for name in ("data.json", "pairs.jsonl", "pairs.jsonl.ledger.sqlite"):
        shutil.copy(FIXTURE / name, directory / name)
    return directory / "data.json", directory / "pairs.jsonl", directory / "pairs.jsonl.ledger.sqlite"


def relocate(ledger, model, data, out):
    """Point the copied ledger at this test's files. The ledger records where its run's files
    are, as absolute paths (the fingerprint's base_model, sft_data and db_root, and
    output_path), and a resume with other paths is refused; the fixture was made in
    /tmp/prefgen-old-ledger, so the test rewrites those four values, with plain sqlite3, and
    nothing else."""
    conn = sqlite3.connect(ledger)
    fingerprint = json.loads(conn.execute("select value from meta where key = 'fingerprint'").fetchone()[0])
    fingerprint.update(base_model=str(model.resolve()), sft_data=str(data.resolve()), db_root=str(DB_ROOT.resolve()))
    conn.execute("update meta set value = ? where key = 'fingerprint'", [orjson.dumps(fingerprint).decode()])
    conn.execute("update meta set value = ? where key = 'output_path'", [str(out.resolve())])
    conn.commit()
    conn.close()


def untouched(path):
    """What must not change when a file is only read: its bytes and its modification time."""
    return path.read_bytes(), path.stat().st_mtime_ns


def schema(ledger) -> dict:
    """A ledger's views (name -> SQL), tables (name -> columns) and applied migrations."""
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")]
        return {
            "views": stored_views(conn),
            "tables": {t: [(c[1], c[2], c[5]) for c in conn.execute(f'pragma table_info("{t}")')] for t in tables},
            "indexes": sorted(row[0] for row in conn.execute("select name from sqlite_master where type = 'index'")),
            "migrations": [row[0] for row in conn.execute("select name from _prefgen_migrations order by rowid")],
        }
    finally:
        conn.close()


@pytest.fixture
def fresh_ledger(tmp_path):
    """A ledger made by this prefgen, with nothing in it."""
    path = tmp_path / "fresh.ledger.sqlite"
    Ledger(path).close()
    return path


def test_the_old_ledger_resumes_byte_identically(workdir, tiny_model, fresh_ledger):
    data, out, ledger = copy_fixture(workdir)
    relocate(ledger, tiny_model, data, out)
    before = out.read_bytes()
    result = run_cli(generate_args(tiny_model, data, out, **FLAGS))
    assert "Generated 6 units; 12/12 done" in result.output
    reference = workdir / "reference.jsonl"
    run_cli(generate_args(tiny_model, data, reference, **FLAGS))
    # the old run keeps its rules: its golds are not checked (suspects.py came later), so its lines
    # are a fresh run's without the gold check's two fields, byte for byte
    since = ("gold_suspect", "gold_suspect_detail")
    fresh = [{k: v for k, v in line.items() if k not in since} for line in read_jsonl(reference)]
    assert all(since[0] in line for line in read_jsonl(reference))
    assert out.read_bytes() == b"".join(orjson.dumps(line) + b"\n" for line in fresh)
    assert out.read_bytes().startswith(before) and len(read_jsonl(out)) == 12
    assert_ledger_agrees_with_file(out)
    assert [r["status"] for r in query(ledger, "select status from runs order by id")] == ["crashed", "finished"]
    assert schema(ledger) == schema(fresh_ledger)


def test_the_old_ledger_is_read_and_browsed_without_being_written(workdir):
    _, out, ledger = copy_fixture(workdir)
    before = untouched(ledger), untouched(out)
    data = orjson.loads(run_cli(["ledger", "status", str(ledger), "--json"]).output)
    assert data["units"] == {
        "total": 12,
        "done": 6,
        "remaining": 6,
        "failed": 0,
        "by_status": {"written": 6},
        "by_verdict": {"exec_error (kept)": 6},
    }
    assert data["samples"] == {"total": 6, "complete": 3, "partial": 0, "pending": 3}
    assert data["lines_written"] == 6
    assert [r["status"] for r in data["runs"]] == ["crashed"]  # its row says running; no process holds its lock
    assert run_cli(["ledger", "status", str(out)]).output.startswith("Ledger")
    assert run_cli(["ledger", "show", str(ledger), "5"]).output.startswith("Sample 5: 2 units")
    assert run_cli(["ledger", "failures", str(ledger)]).output.strip() == "No failed units."
    home, progress, dashboard = browse_pages(ledger, "/", "/ledger/progress.json?_shape=array", "/-/dashboards/run")
    assert home[0] == progress[0] == dashboard[0] == 200
    assert orjson.loads(progress[1])[0]["units_done"] == 6
    reader = Ledger(ledger, readonly=True)
    try:  # its views are today's: the reader needs no TEMP views
        assert reader.db.execute("select count(*) from temp.sqlite_master").fetchone()[0] == 0
    finally:
        reader.close()
    assert (untouched(ledger), untouched(out)) == before


def test_older_views_are_replaced_for_a_reader_and_rewritten_by_a_writer(workdir, fresh_ledger):
    """A ledger whose sample_progress is m002's (no `complete` column, which `progress` reads)."""
    _, _, ledger = copy_fixture(workdir)
    stages = json.loads((FIXTURE / "stages.json").read_text())
    old = next(sql for kind, name, sql in stages[1]["schema"] if name == "sample_progress")
    conn = sqlite3.connect(ledger)
    conn.executescript(f"drop view sample_progress; {old}")
    conn.close()
    with pytest.raises(sqlite3.OperationalError, match="complete"):
        query(ledger, "select * from progress")
    before = untouched(ledger)
    data = orjson.loads(run_cli(["ledger", "status", str(ledger), "--json"]).output)
    assert data["samples"] == {"total": 6, "complete": 3, "partial": 0, "pending": 3}
    [(status, body)] = browse_pages(ledger, "/ledger/sample_progress.json?_shape=array")
    assert status == 200 and sum(row["complete"] for row in orjson.loads(body)) == 3
    assert untouched(ledger) == before
    Ledger(ledger).close()  # a writing open replaces them
    assert stored_views(sqlite3.connect(ledger)) == VIEWS == schema(fresh_ledger)["views"]


def old_stage(path, stage: int):
    """An empty ledger as the fixture's prefgen left it after its migration number `stage` + 1
    (stages.json: the schema, views included, after each of them)."""
    stages = json.loads((FIXTURE / "stages.json").read_text())
    conn = sqlite3.connect(path)
    for _, _, sql in stages[stage]["schema"]:
        conn.execute(sql)
    conn.executemany("insert into _prefgen_migrations values (?, '')", [[m] for m in stages[stage]["migrations"]])
    conn.commit()
    conn.close()
    return stages[stage]["migrations"]


@pytest.mark.parametrize("stage", range(6))
def test_a_ledger_from_any_earlier_migration_ends_up_with_a_new_ones_schema(tmp_path, fresh_ledger, stage):
    path = tmp_path / "old.ledger.sqlite"
    migrations = old_stage(path, stage)
    before = untouched(path)
    if len(migrations) < 6:
        with pytest.raises(LedgerError, match="written by an older prefgen") as refused:
            Ledger(path, readonly=True)
        assert "prefgen generate" in refused.value.hint
    else:
        Ledger(path, readonly=True).close()
    assert untouched(path) == before
    Ledger(path).close()
    assert schema(path) == schema(fresh_ledger)


def test_reading_a_ledger_whose_tables_are_older_is_refused_with_a_hint(workdir):
    path = workdir / "old.ledger.sqlite"
    old_stage(path, 4)  # no `samples` table yet
    before = untouched(path)
    result = run_cli(["ledger", "status", str(path)], expect=1)
    assert f"Error: {path} was written by an older prefgen: its tables lack the migrations m006_browse" in result.output
    assert "run its `prefgen generate` command again" in result.output
    assert untouched(path) == before


def test_a_writing_open_rewrites_the_views_only_when_they_differ(fresh_ledger):
    def schema_version():
        conn = sqlite3.connect(fresh_ledger)
        try:
            return conn.execute("pragma schema_version").fetchone()[0]
        finally:
            conn.close()

    version = schema_version()
    Ledger(fresh_ledger).close()
    assert schema_version() == version  # nothing to change: nothing written
    conn = sqlite3.connect(fresh_ledger)
    conn.execute("drop view failures")
    conn.close()
    Ledger(fresh_ledger).close()
    assert schema(fresh_ledger)["views"] == VIEWS
