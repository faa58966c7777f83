"""`prefgen browse`: the ledger in Datasette, read-only, with prefgen's dashboard and queries."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest
from conftest import ROOT, browse_pages, finished_run, generate_args, query, read_jsonl, run_cli, start

DB_ROOT = ROOT / "examples" / "spider_en" / "db"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def judged_run(tiny_model, tmp_path_factory):
    """A finished run of the tiny model with --db-root (so verdicts exist)."""
    out = finished_run(tiny_model, tmp_path_factory.mktemp("browse"), max_samples=6)
    return out, str(out) + ".ledger.sqlite"


def rows(ledger, url):
    status, body = browse_pages(ledger, url)[0]
    assert status == 200, body[:500]
    return orjson.loads(body)


def test_pages_and_queries_show_what_the_ledger_holds(judged_run):
    out, ledger = judged_run
    units = query(ledger, "select * from units order by sample_index, reject_index")
    sample = rows(ledger, "/ledger/sample.json?sample=2&_shape=array")
    expected = [u for u in units if u["sample_index"] == 2]
    assert [(r["attempt"], r["seed"], r["status"], r["verdict"], r["sql"], r["raw_answer"]) for r in sample] == [
        (u["reject_index"], u["seed"], u["status"], u["verdict"], u["sql"], u["raw_answer"]) for u in expected
    ]
    gold = query(ledger, "select gold, db from samples where sample_index = 2")[0]
    assert {r["gold"] for r in sample} == {gold["gold"]} and gold["db"] == "department_store"
    lines = read_jsonl(out)
    pairs = rows(ledger, "/ledger/pair_lines.json?_shape=array&_size=max")
    assert [(p["chosen"], p["rejected"], p["rejected_verdict"]) for p in pairs] == [
        (line["chosen"], line["rejected"], line["verdict"]) for line in lines
    ]
    filtered = rows(ledger, "/ledger/pairs.json?db=department_store&verdict=exec_error&source=gold&_shape=array")
    assert len(filtered) == sum(line["verdict"] == "exec_error" for line in lines) > 0
    assert rows(ledger, "/ledger/pairs.json?db=no_such_db&verdict=&source=&_shape=array") == []
    outcomes = rows(ledger, "/ledger/outcomes_by_database.json?_shape=array")
    assert sum(o["units"] for o in outcomes) == len(units) and {o["db"] for o in outcomes} == {"department_store"}
    status, page = browse_pages(ledger, "/-/dashboards/run")[0]
    assert status == 200
    for title in ("Units done over time", "Verdicts per database", "Units by status", "Failures", "ETA"):
        assert title in page
    # long SQL and answers are not cut
    status, table = browse_pages(ledger, "/ledger/pair_lines?_size=max")[0]
    assert status == 200 and max(len(line["chosen"]) for line in lines) > 100
    assert all(line["chosen"].replace('"', "&#34;").replace("'", "&#39;") in table for line in lines[:3])


def test_the_dashboard_and_ledger_status_agree(judged_run):
    out, ledger = judged_run
    status = orjson.loads(run_cli(["ledger", "status", str(out), "--json"]).output)  # the output path works too
    progress = rows(ledger, "/ledger/progress.json?_shape=array")[0]
    speed = rows(ledger, "/ledger/speed.json?_shape=array")[0]
    assert (status["units"]["done"], status["units"]["total"]) == (progress["units_done"], progress["units_total"])
    assert status["samples"]["complete"] == progress["samples_complete"]
    assert status["lines_written"] == progress["lines_written"] == len(read_jsonl(out))
    assert status["eta_s"] == speed["eta_s"] == 0.0
    assert status["throughput"]["units_per_s"] == speed["units_per_s"] > 0
    assert status["throughput"]["recent_units_per_s"] == speed["recent_units_per_s"]
    by_status = {}
    for row in rows(ledger, "/ledger/outcomes_by_database.json?_shape=array"):
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["units"]
    assert by_status == status["units"]["by_status"]
    # docs/ledger.md's first query reads the same view
    assert query(ledger, "select * from progress") == [progress]


def test_the_home_page_lists_only_the_ledger(judged_run):
    _, ledger = judged_run
    (status, body), (page_status, page), (memory, _) = browse_pages(ledger, "/.json", "/", "/_memory")
    assert status == page_status == 200
    assert list(orjson.loads(body)) == ["ledger"]
    assert "_memory" not in page and memory == 404


def test_the_time_axis_spec_is_a_24_hour_utc_clock(judged_run):
    from prefgen.ledger.browse import configuration

    x = configuration()["plugins"]["datasette-dashboards"]["run"]["charts"]["progress"]["display"]["encoding"]["x"]
    assert (x["type"], x["scale"], x["axis"]) == ("temporal", {"type": "utc"}, {"format": "%H:%M"})
    status, page = browse_pages(judged_run[1], "/-/dashboards/run")[0]
    assert status == 200 and '"format": "%H:%M"' in page


def test_browsing_cannot_write(judged_run):
    _, ledger = judged_run
    before = query(ledger, "select count(*) as n from units")
    results = browse_pages(
        ledger,
        "/ledger.json?sql=delete+from+units",
        "/ledger.json?sql=" + urllib.request.quote("with x as (select 1) delete from units"),
        "/ledger.json?sql=" + urllib.request.quote("select 1; drop table units"),
    )
    assert all(status >= 400 for status, _ in results)
    assert rows(ledger, "/ledger.json?sql=select+count(*)+as+n+from+units&_shape=array") == before
    from prefgen.errors import LedgerError
    from prefgen.ledger.browse import make_datasette

    ds = make_datasette(ledger)
    with pytest.raises(LedgerError, match="read-only"):
        ds.get_database("ledger").connect(write=True)
    assert query(ledger, "select count(*) as n from units") == before


def test_ledger_commands_take_the_output_path(judged_run, workdir):
    out, _ = judged_run
    assert "Units" in run_cli(["ledger", "status", str(out)]).output
    assert "Sample 0:" in run_cli(["ledger", "show", str(out), "0"]).output
    missing = run_cli(["ledger", "status", str(workdir / "nothing.jsonl")], expect=1).output
    assert "Error: " in missing and "no such ledger or output" in missing
    plain = workdir / "plain.jsonl"
    plain.write_text("{}\n")
    refused = run_cli(["ledger", "status", str(plain)], expect=1).output
    assert "neither a prefgen ledger nor an output with a ledger beside it" in refused


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(path):
    """`prefgen browse PATH` in a subprocess; returns (process, base URL) once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "prefgen", "browse", str(path), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/-/versions.json", timeout=2).read()
            return process, base
        except OSError:
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.2)
    process.kill()
    raise AssertionError("prefgen browse did not answer")


def chromium(*args, env=None) -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium (.ci/run installs it)")
        pytest.skip("needs chromium (apt-get install chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--user-data-dir=" + str(os.environ.get("PYTEST_TMP", "/tmp")) + f"/chromium-{os.getpid()}",
    ]
    done = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, env=env)
    return done.stdout


@pytest.mark.slow
def test_the_dashboard_renders_in_a_real_browser(judged_run, tmp_path):
    out, ledger = judged_run
    process, base = serve(out)
    try:
        dom = chromium(
            "--virtual-time-budget=15000", "--window-size=1400,1600", "--dump-dom", base + "/-/dashboards/run"
        )
        shot = tmp_path / "dashboard.png"
        chromium(
            "--virtual-time-budget=15000", "--window-size=1400,1600", f"--screenshot={shot}", base + "/-/dashboards/run"
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    progress = query(ledger, "select * from progress")[0]
    assert dom.count('class="marks"') >= 3, "the Vega-Lite charts should have rendered"
    assert f">{progress['units_done']}<" in dom and f">{progress['lines_written']}<" in dom
    assert "Units by status" in dom and "exec_error" in dom
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1400, 1600)
    assert len(set(pixels)) > 64, "the screenshot is blank"


def test_the_time_axis_is_a_24_hour_utc_clock(judged_run, tmp_path):
    """A run at 14:09-14:12 UTC, drawn by a browser in Tokyo (UTC+9): the axis says 14:1x, not
    02:1x PM (a 12-hour clock) nor 23:1x (local time)."""
    import re
    import sqlite3

    _, ledger = judged_run
    afternoon = tmp_path / "afternoon.ledger.sqlite"
    source, copy = sqlite3.connect(ledger), sqlite3.connect(afternoon)
    source.backup(copy)
    source.close()
    copy.execute("update units set updated_at = printf('2024-05-01T14:%02d:30.000+00:00', 9 + sample_index * 3 / 5)")
    copy.commit()
    copy.close()
    assert {r["minute"] for r in query(afternoon, "select minute from progress_over_time")} == {
        f"2024-05-01T14:{m:02d}" for m in (9, 10, 11, 12)
    }
    process, base = serve(afternoon)
    try:
        dom = chromium(
            "--virtual-time-budget=15000",
            "--window-size=1400,1600",
            "--dump-dom",
            base + "/-/dashboards/run",
            env={**os.environ, "TZ": "Asia/Tokyo"},
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    labels = re.findall(r">(\d\d:\d\d)</text>", dom)
    assert labels and set(labels) <= {f"14:{m:02d}" for m in range(8, 14)}, labels
    assert "PM" not in labels


def png_pixels(path):
    """(width, height, the decompressed scanlines) of a PNG file."""
    import zlib

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, compressed, size = 8, b"", (0, 0)
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            size = (int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big"))
        elif kind == b"IDAT":
            compressed += body
        position += 12 + length
    return *size, zlib.decompress(compressed)


@pytest.mark.slow
def test_browsing_a_run_while_it_writes_changes_nothing(tiny_model, sample_data, workdir):
    flags = dict(num_rejects=2, max_samples=10, batch_size=2, db_root=DB_ROOT)
    reference = workdir / "reference.jsonl"
    run_cli(generate_args(tiny_model, sample_data, reference, **flags))
    out = workdir / "pairs.jsonl"
    run = start(generate_args(tiny_model, sample_data, out, **flags))
    while run.poll() is None and not (out.exists() and out.stat().st_size):
        time.sleep(0.05)
    process, base = serve(out)
    seen = []
    try:
        while run.poll() is None:
            for page in ("/-/dashboards/run", "/ledger/progress.json?_shape=array", "/ledger/pair_lines.json"):
                with urllib.request.urlopen(base + page, timeout=10) as response:
                    assert response.status == 200
            progress = orjson.loads(urllib.request.urlopen(base + "/ledger/progress.json?_shape=array").read())[0]
            seen.append(progress["units_done"])
    finally:
        process.terminate()
        process.wait(timeout=30)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    assert len(seen) >= 2 and seen == sorted(seen), "the dashboard followed the run"
    assert out.read_bytes() == reference.read_bytes()


def test_browse_without_datasette_names_the_install_command(judged_run, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasette(name, *args, **kwargs):
        if name.startswith("datasette"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasette)
    result = run_cli(["browse", str(judged_run[0])], expect=1)
    assert "pip install 'prefgen[browse]'" in result.output and "Traceback" not in result.output
