"""Readers never write: every read command works on a ledger on read-only storage and leaves
nothing beside it; a run whose process died shows as crashed; what reaches the terminal is
readable (control characters escaped, stop reasons whole, one line per failed browse request)."""

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, browse_pages, committed, finished_run, generate_args, query, run, run_cli, start

DB_ROOT = ROOT / "examples" / "spider_en" / "db"


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """A finished run with --db-root (verdicts, gold checks): (output, ledger)."""
    out = finished_run(tiny_model, tmp_path_factory.mktemp("finished"), max_samples=4)
    return out, out.parent / (out.name + ".ledger.sqlite")


def beside(ledger):
    """The SQLite files next to the ledger (-wal, -shm, -journal)."""
    return sorted(p.name for p in ledger.parent.iterdir() if p.name.startswith(ledger.name + "-"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def browse(path, *urls):
    """`prefgen browse PATH` in a subprocess: (status, body) of each URL, then its stderr."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "prefgen", "browse", str(path), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base, pages = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/-/versions.json", timeout=2).read()
                break
            except OSError:
                assert process.poll() is None and time.time() < deadline, process.communicate()
                time.sleep(0.2)
        for url in urls:
            try:
                with urllib.request.urlopen(base + url, timeout=30) as response:
                    pages.append((response.status, response.read().decode()))
            except urllib.error.HTTPError as exc:
                pages.append((exc.code, exc.read().decode()))
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    return pages, stderr


def chart_url(name: str) -> str:
    """The JSON of one dashboard panel's query, as the dashboard fetches it."""
    from prefgen.ledger.browse import configuration

    sql = configuration()["plugins"]["datasette-dashboards"]["run"]["charts"][name]["query"]
    return "/ledger.json?_shape=array&sql=" + urllib.parse.quote(sql)


def read_commands(out, ledger, export_to):
    """Every read command, through the real CLI (the browser's in `browse`)."""
    return [
        ["ledger", "status", str(ledger)],
        ["ledger", "status", str(out), "--json"],
        ["ledger", "status", str(ledger), "--as-config"],
        ["ledger", "show", str(ledger), "1", "--full"],
        ["ledger", "suspects", str(out)],
        ["ledger", "suspects", str(ledger), "--json"],
        ["ledger", "failures", str(ledger)],
        ["export", str(out), "--format", "trl", "--to", str(export_to)],
    ]


def test_read_commands_leave_nothing_beside_a_finished_ledger(finished, tmp_path):
    out, ledger = finished
    assert beside(ledger) == []
    for args in read_commands(out, ledger, tmp_path / "export"):
        run_cli(args)
        assert beside(ledger) == [], args
    pages, _ = browse(out, "/-/dashboards/run", chart_url("runs"), "/ledger/pair_lines.json", "/ledger/units")
    assert [status for status, _ in pages] == [200] * 4
    assert beside(ledger) == [], "browse"


@pytest.fixture
def read_only_copy(finished, tmp_path):
    """The finished run (output, ledger and their lock files) on a read-only bind mount."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount a read-only directory (chmod does not stop root)")
    src, dst = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    dst.mkdir()
    out, ledger = finished
    for path in (out, ledger, ledger.with_name(ledger.name + ".lock"), out.with_name(out.name + ".lock")):
        shutil.copy(path, src / path.name)
    mounted = subprocess.run(
        f"mount --bind {src} {dst} && mount -o remount,bind,ro {dst}", shell=True, capture_output=True, text=True
    )
    if mounted.returncode != 0:
        subprocess.run(["umount", str(dst)], capture_output=True)
        pytest.skip(f"cannot mount a read-only directory here: {mounted.stderr.strip()}")
    try:
        assert not os.access(dst, os.W_OK) and not os.access(dst / ledger.name, os.W_OK)
        yield dst / out.name, dst / ledger.name, src
    finally:
        for _ in range(50):  # a browse subprocess may hold it a moment longer
            if subprocess.run(["umount", str(dst)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


def test_every_read_command_reads_a_ledger_on_read_only_storage(read_only_copy, finished, tmp_path):
    out, ledger, src = read_only_copy
    before = sorted(p.name for p in src.iterdir())
    expected = orjson.loads(run_cli(["ledger", "status", str(finished[1]), "--json"]).output)
    for args in read_commands(out, ledger, tmp_path / "export"):
        result = run_cli(args)
        assert "Error" not in result.output, args
    data = orjson.loads(run_cli(["ledger", "status", str(ledger), "--json"]).output)
    assert data["units"] == expected["units"] and data["runs"] == expected["runs"]
    pages, stderr = browse(out, "/-/dashboards/run", chart_url("runs"), "/ledger/progress.json?_shape=array")
    assert [status for status, _ in pages] == [200] * 3, stderr
    assert orjson.loads(pages[2][1])[0]["units_done"] == data["units"]["done"]
    assert sorted(p.name for p in src.iterdir()) == before


@pytest.fixture(scope="module")
def killed(tiny_model, tmp_path_factory):
    """A run killed (kill -9) after its second commit: its `runs` row still says running."""
    work = tmp_path_factory.mktemp("killed")
    data = work / "data.json"
    shutil.copy(ROOT / "examples" / "spider_en" / "department_store_alpaca.json", data)
    out = work / "pairs.jsonl"
    args = generate_args(tiny_model, data, out, num_rejects=2, max_samples=6, batch_size=3, lookahead=1)
    code, _ = run(args, fault="after_commit:kill@2")
    assert code == -9
    return out, str(out) + ".ledger.sqlite"


def test_a_killed_run_shows_as_crashed_without_writing_the_ledger(killed):
    out, ledger = killed
    raw = query(ledger, "select status, stop_reason from runs")
    assert raw == [{"status": "running", "stop_reason": None}]
    data = orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)
    assert [(r["status"], r["stop_reason"]) for r in data["runs"]] == [("crashed", "the process died")]
    assert data["eta_s"] is None and data["units"]["remaining"] == 6
    text = run_cli(["ledger", "status", str(out)]).output
    assert "crashed: the process died" in text and "running" not in text.replace("no run is running", "")
    assert "ETA      - (no run is running" in text
    assert all(len(line) <= 80 for line in text.splitlines() if not line.startswith("Ledger"))
    (_, eta), (_, runs) = browse_pages(ledger, chart_url("eta"), chart_url("runs"))
    eta, runs = orjson.loads(eta), orjson.loads(runs)
    assert eta == [{"eta": "crashed"}]
    assert (runs[0]["status"], runs[0]["stop_reason"]) == ("crashed", "the process died")
    assert query(ledger, "select status, stop_reason from runs") == raw  # nothing written


def test_a_live_run_shows_as_running_with_an_eta(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    ledger = str(out) + ".ledger.sqlite"
    process = start(
        generate_args(tiny_model, sample_data, out, num_rejects=2, max_samples=6, batch_size=2),
        fault="before_generate:sleep@3",  # two batches committed, then a pause holding the ledger
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and committed(ledger) != 4:
            time.sleep(0.2)
        data = orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)
        assert data["runs"][-1]["status"] == "running" and data["eta_s"] is not None
        assert "ETA      -" not in run_cli(["ledger", "status", ledger]).output
        (_, eta), (_, runs) = browse_pages(ledger, chart_url("eta"), chart_url("runs"))
        assert orjson.loads(eta)[0]["eta"].endswith(" min")
        assert orjson.loads(runs)[0]["status"] == "running"
    finally:
        process.kill()
        process.communicate()
    assert orjson.loads(run_cli(["ledger", "status", ledger, "--json"]).output)["runs"][-1]["status"] == "crashed"


def test_an_interrupted_run_s_stop_reason_is_whole(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, max_samples=6, batch_size=2)
    code, output = run(args, fault="after_commit:sigint")
    assert code == 130, output
    text = run_cli(["ledger", "status", str(out)]).output
    assert "interrupted: stopped by SIGINT after committing" in " ".join(text.split())
    assert all(len(line) <= 80 for line in text.splitlines() if not line.startswith("Ledger"))


def test_show_escapes_control_characters_on_the_terminal_only(finished, tmp_path):
    ledger = tmp_path / "copy.ledger.sqlite"
    source, copy = sqlite3.connect(finished[1]), sqlite3.connect(ledger)
    source.backup(copy)
    source.close()
    answer = "SELECT 1\x00\x08\x08\x1b[2J\r-- end\n\tnext line"
    copy.execute("update units set raw_answer = ?, detail = ? where sample_index = 0", [answer, "bad\x07"])
    copy.commit()
    copy.close()
    text = run_cli(["ledger", "show", str(ledger), "0", "--full"]).output
    assert "answer: SELECT 1\\x00\\x08\\x08\\x1b[2J\\r-- end\n\tnext line" in text
    assert "detail: bad\\x07" in text
    assert not any(ord(c) < 0x20 and c not in "\n\t" for c in text)
    assert query(ledger, "select raw_answer from units where sample_index = 0")[0]["raw_answer"] == answer


def test_browse_refuses_a_port_in_use_before_saying_it_serves(finished):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["browse", str(finished[0]), "--port", str(port)], expect=1)
    assert f"Error: port {port} is in use" in result.output and "--port" in result.output
    assert "Serving" not in result.output and "Traceback" not in result.output


def test_browse_says_a_bad_url_in_one_line_and_empty_panels_say_none(finished):
    out, ledger = finished
    pages, stderr = browse(
        out, "/ledger/no_such_table", "/ledger/units?_sort=no_such_column", chart_url("failures"), chart_url("suspects")
    )
    assert [status for status, _ in pages] == [404, 500, 200, 200]
    assert "Traceback" not in stderr and "locals" not in stderr
    lines = [line for line in stderr.splitlines() if "/ledger/no_such" in line or "/ledger/units" in line]
    assert lines == [
        "GET /ledger/no_such_table: 404 Table not found",
        "GET /ledger/units?_sort=no_such_column: 500 Cannot sort table by no_such_column",
    ], stderr
    assert len(stderr.splitlines()) <= 4, stderr
    assert orjson.loads(pages[2][1]) == [{"status": "none", "reason": "no failed units", "units": 0, "samples": ""}]
    assert query(ledger, "select count(*) as n from samples where gold_suspect = 1") == [{"n": 0}]
    assert orjson.loads(pages[3][1])[0]["why"] == "no suspect gold"


def test_a_writer_waits_for_a_reader_and_a_reader_sees_the_writer(finished, tmp_path):
    import threading

    from prefgen.runtime.lock import exclusive, shared

    ledger = tmp_path / "copy.ledger.sqlite"
    shutil.copy(finished[1], ledger)
    reader = shared(ledger)  # no lock file yet (a copied ledger): the reader makes it, and holds it shared
    assert reader.writer is None and reader.fd is not None and Path(f"{ledger}.lock").exists()
    reader.release()
    with exclusive(ledger):
        holder = shared(ledger)
        assert (
            holder.fd is None
            and holder.writer["pid"] == os.getpid()
            and holder.holds(os.getpid(), socket.gethostname())
        )
    reader = shared(ledger)  # held shared, as during one read
    assert reader.writer is None and reader.fd is not None
    threading.Timer(0.5, reader.release).start()
    started = time.time()
    assert "Marked 0 units for retry" in run_cli(["ledger", "retry", str(ledger)]).output  # waited, then wrote
    assert time.time() - started >= 0.4
