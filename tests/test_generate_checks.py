"""`prefgen generate --db-root` (execution verdicts while generating) and `--max-attempts`."""

import hashlib
import os
import signal
import time

import orjson
import pytest
from conftest import ROOT, ScriptedEngine, generate_args, query, read_jsonl, run, run_cli, start, write_records

from prefgen.config import GenerateConfig
from prefgen.errors import ConfigError
from prefgen.executors import generate

DB_ROOT = ROOT / "examples" / "spider_en" / "db"
DB_FILE = DB_ROOT / "department_store" / "department_store.sqlite"
GOLD = "SELECT product_name, product_price FROM products WHERE product_price > 900"
ANSWERS = {  # attempt -> answer, for every sample of the scripted runs
    0: "SELECT product_price, product_name FROM products WHERE product_price > 900",  # equivalent
    1: "```sql\nSELECT product_name, product_price FROM products WHERE product_price > 800\n```",  # wrong
    2: "select product_name , product_price from products where product_price > 900;",  # same as gold
    3: "SELECT  product_name,product_price FROM products WHERE product_price > 800",  # duplicate of 1
    4: "SELECT product_name FROM products",  # wrong
    5: "SELECT no_such_column FROM products",  # exec_error
}


def ledger_units(out, columns="*"):
    return query(str(out) + ".ledger.sqlite", f"select {columns} from units order by sample_index, reject_index")


def scripted_records(path, db_ids=("department_store",) * 3):
    return write_records(path, [{"instruction": f"q{i}", "output": GOLD, "db_id": db} for i, db in enumerate(db_ids)])


def scripted_run(workdir, data, engine, **settings):
    options = dict(num_rejects=2, max_attempts=6, dedup_rejects="sql", db_root=str(DB_ROOT), device="cpu")
    options.update(settings)
    cfg = GenerateConfig.from_flags(
        base_model="scripted", sft_data=str(data), output=str(workdir / "pairs.jsonl"), **options
    )
    return generate(cfg, ["test"], show_progress=False, engine=engine)


def test_db_root_gives_every_kept_reject_a_verdict_in_the_ledger_and_the_jsonl(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    before = hashlib.sha256(DB_FILE.read_bytes()).hexdigest()
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=4, db_root=DB_ROOT, exec_workers=2))
    lines = read_jsonl(out)
    units = {(u["sample_index"], u["reject_index"]): u for u in ledger_units(out)}
    assert lines and len(units) == 8
    for line in lines:
        unit = units[(line["sample_index"], line["reject_index"])]
        # the tiny model writes random text: SQLite refuses it, and the reject is kept
        assert line["verdict"] == unit["verdict"] == "exec_error"
        assert line["verdict_detail"] == unit["verdict_detail"] and "syntax error" in unit["verdict_detail"]
    assert all(u["verdict"] is None for u in units.values() if u["status"] != "written")
    status = orjson.loads(run_cli(["ledger", "status", str(out) + ".ledger.sqlite", "--json"]).output)
    assert status["units"]["by_verdict"] == {"exec_error (kept)": len(lines)}
    assert hashlib.sha256(DB_FILE.read_bytes()).hexdigest() == before


def test_verdicts_drop_equivalent_rejects_and_further_attempts_fill_the_quota(workdir):
    data = scripted_records(workdir / "data.json")
    engine = ScriptedEngine(lambda sample, attempt: ANSWERS[attempt])
    summary = scripted_run(workdir, data, engine)
    assert summary.finished and summary.total_units == 15
    units = ledger_units(workdir / "pairs.jsonl")
    expected = [
        (0, "dropped", "disputed"),  # columns swapped: Spider right, BIRD wrong (--evaluator both): never a reject
        (1, "written", "wrong_result"),
        (2, "same_as_gold", None),  # wave 2: one more reject needed
        (3, "duplicate", None),  # wave 3: the same SQL as attempt 1, not executed again
        (4, "written", "wrong_result"),  # wave 4: the quota of 2 is reached, attempt 5 is not made
    ]
    for sample in range(3):
        rows = [u for u in units if u["sample_index"] == sample]
        assert [(u["reject_index"], u["status"], u["verdict"]) for u in rows] == expected
        assert [u["seed"] for u in rows] == [42 + sample * 1000 + a for a in range(5)]
    dropped = units[0]
    assert (dropped["multiset_differs"], dropped["order_differs"]) == (0, 0)
    lines = read_jsonl(workdir / "pairs.jsonl")
    assert sorted((line["sample_index"], line["reject_index"], line["verdict"]) for line in lines) == [
        (s, a, "wrong_result") for s in range(3) for a in (1, 4)
    ]
    progress = query(str(workdir / "pairs.jsonl") + ".ledger.sqlite", "select * from progress")[0]
    assert (progress["units_total"], progress["units_done"], progress["samples_complete"]) == (15, 15, 3)


def test_attempts_stop_at_max_attempts_and_the_sample_counts_as_complete(workdir):
    data = scripted_records(workdir / "data.json", db_ids=["department_store"])
    engine = ScriptedEngine(lambda sample, attempt: ANSWERS[0])  # always an equivalent reject
    summary = scripted_run(workdir, data, engine, max_attempts=5)
    assert summary.finished
    units = ledger_units(workdir / "pairs.jsonl")
    # attempt 0 is dropped; the later ones repeat it and are duplicates, until 5 attempts
    assert [(u["reject_index"], u["status"]) for u in units] == [(0, "dropped")] + [
        (a, "duplicate") for a in (1, 2, 3, 4)
    ]
    assert not (workdir / "pairs.jsonl").read_bytes()
    status = orjson.loads(run_cli(["ledger", "status", str(workdir / "pairs.jsonl.ledger.sqlite"), "--json"]).output)
    assert status["samples"] == {"total": 1, "complete": 1, "partial": 0, "pending": 0}


@pytest.mark.parametrize(
    "flags, kept",
    [
        ({}, {"unverifiable"}),
        ({"drop_unverifiable": True}, set()),
    ],
)
def test_a_missing_database_is_unverifiable_and_kept_unless_dropped(workdir, flags, kept):
    data = scripted_records(workdir / "data.json", db_ids=["no_such_db"])
    engine = ScriptedEngine(lambda sample, attempt: ANSWERS[4])
    with pytest.raises(ConfigError, match="no_such_db"):  # refused at start, naming it
        scripted_run(workdir, data, engine, max_attempts=0, dedup_rejects="", **flags)
    scripted_run(workdir, data, engine, max_attempts=0, dedup_rejects="", allow_missing_db=True, **flags)
    units = ledger_units(workdir / "pairs.jsonl")
    assert {u["verdict"] for u in units} == {"unverifiable"}
    assert {u["verdict_detail"] for u in units} == {"database missing"}
    assert {line["verdict"] for line in read_jsonl(workdir / "pairs.jsonl")} == kept


def test_stricter_equivalence_keeps_rejects_whose_rows_differ_as_multisets(workdir):
    gold = "SELECT product_type_code FROM products"
    data = write_records(workdir / "data.json", [{"instruction": "q", "output": gold, "db_id": "department_store"}])
    engine = ScriptedEngine(lambda sample, attempt: "SELECT DISTINCT product_type_code FROM products")
    scripted_run(workdir, data, engine, num_rejects=1, max_attempts=0, equivalence="multiset")
    (unit,) = ledger_units(workdir / "pairs.jsonl")
    assert (unit["status"], unit["verdict"], unit["multiset_differs"]) == ("written", "equivalent", 1)


def test_default_max_attempts_makes_exactly_num_rejects_attempts(workdir):
    data = scripted_records(workdir / "data.json")
    engine = ScriptedEngine(lambda sample, attempt: ANSWERS[0])
    scripted_run(workdir, data, engine, max_attempts=0)
    assert sorted(engine.generated) == [(s, a) for s in range(3) for a in range(2)]


@pytest.mark.slow
def test_resume_after_kills_makes_the_same_attempts_as_an_uninterrupted_run(workdir, tiny_model, sample_data):
    """Greedy decoding repeats a sample's answer, so --dedup-rejects leaves it one reject short
    and further attempts are made until --max-attempts: waves cut by kills must not change them."""
    flags = dict(num_rejects=2, max_attempts=4, temperature=0, dedup_rejects=True, batch_size=3, max_samples=5)
    out, reference = workdir / "pairs.jsonl", workdir / "reference.jsonl"
    run_cli(generate_args(tiny_model, sample_data, reference, **flags))
    kills = 0
    for n in (2, 3, 2):
        code, _ = run(generate_args(tiny_model, sample_data, out, **flags), fault=f"after_commit:kill@{n}")
        kills += code == -9
    assert kills >= 2
    code, output = run(generate_args(tiny_model, sample_data, out, **flags))
    assert code == 0, output
    columns = "sample_index, reject_index, seed, status, sql"
    expected = ledger_units(reference, columns)
    assert ledger_units(out, columns) == expected
    assert max(u["reject_index"] for u in expected) == 3  # attempts beyond --num-rejects were made
    assert sorted(out.read_bytes().splitlines()) == sorted(reference.read_bytes().splitlines())


def start_until_lines(args, out, fault):
    """Start a run in a subprocess and return it once it has written lines to `out`."""
    process = start(args, fault=fault)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and out.stat().st_size):
        time.sleep(0.1)
    return process


@pytest.mark.slow
def test_sigint_with_verdicts_pending_commits_them_and_stops(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, max_samples=40, batch_size=2, db_root=DB_ROOT)
    process = start_until_lines(args, out, fault=None)  # the first batch is committed
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    units = ledger_units(out)
    assert 0 < len(units) < 80  # stopped early, with every batch it judged committed
    assert all(u["verdict"] for u in units if u["status"] == "written")
    assert len(read_jsonl(out)) == sum(u["status"] == "written" for u in units)
    code, output = run(args)
    assert code == 0, output


def test_a_killed_run_leaves_no_worker_processes(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, max_samples=12, batch_size=2, db_root=DB_ROOT)
    process = start_until_lines(args, out, fault="after_commit:sleep@2")
    workers = children(process.pid)
    assert workers, "the executing workers should be running"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_run_with_an_error_and_the_run_resumes(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, max_samples=40, batch_size=2, db_root=DB_ROOT)
    process = start_until_lines(args, out, fault=None)
    workers = [pid for pid in children(process.pid) if "spawn_main" in cmdline(pid)]
    assert workers
    os.kill(workers[0], signal.SIGKILL)  # as the kernel's OOM killer would
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "Error: a process executing SQL for --db-root died" in stderr and "Traceback" not in stderr
    code, output = run(args)
    assert code == 0, output
    units = ledger_units(out)
    assert len(units) == 80 and len(read_jsonl(out)) == sum(u["status"] == "written" for u in units)


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"db_root": "no/such/dir"}, "--db-root no/such/dir is not a directory"),
        ({"max_attempts": 1, "num_rejects": 2}, "--max-attempts must be between --num-rejects (2) and 999"),
        ({"max_attempts": 1000}, "--max-attempts must be between"),
    ],
)
def test_bad_check_settings_are_refused(workdir, tiny_model, sample_data, flags, message):
    result = run_cli(generate_args(tiny_model, sample_data, workdir / "pairs.jsonl", **flags), expect=1)
    assert message in result.output and "Traceback" not in result.output


def test_a_record_without_db_id_is_named(workdir, tiny_model):
    data = write_records(
        workdir / "data.json",
        [{"instruction": "q", "output": "SELECT 1", "db_id": "x"}, {"instruction": "q", "output": "SELECT 1"}],
    )
    result = run_cli(generate_args(tiny_model, data, workdir / "pairs.jsonl", db_root=DB_ROOT), expect=1)
    assert "record 1: field 'db_id' is missing or not a string" in result.output
    assert "--db-field" in result.output
    assert not (workdir / "pairs.jsonl").exists() or not (workdir / "pairs.jsonl").read_bytes()


def test_changing_the_db_root_of_a_run_is_refused(workdir, tiny_model, sample_data, tmp_path_factory):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=1, num_rejects=1, db_root=DB_ROOT))
    other = tmp_path_factory.mktemp("dbs")
    args = generate_args(tiny_model, sample_data, out, max_samples=1, num_rejects=1, db_root=other)
    result = run_cli(args, expect=1)
    assert "department_store" in result.output and "--allow-missing-db" in result.output  # no database there
    result = run_cli([*args, "--allow-missing-db"], expect=1)
    assert "other settings" in result.output and "db_root" in result.output
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=1, num_rejects=1), expect=1)
    assert "db_root" in result.output


def test_the_attempts_rule_finishes_a_cut_wave_and_retries_before_anything_else():
    from prefgen.flow.attempts import AttemptRule

    def units(*statuses):
        return {attempt: {"status": status} for attempt, status in enumerate(statuses)}

    gold = AttemptRule(num_rejects=2, max_attempts=5)  # a wave: as many as are still missing
    assert gold.need(units("written", "no_sql")).further == [2]
    assert gold.need(units("no_sql", "duplicate")).further == [2, 3]
    assert gold.need(units("no_sql", "duplicate", "oom")).retry == [2]
    assert gold.need({0: {"status": "written"}, 2: {"status": "written"}}).retry == [1]  # a gap
    assert gold.need(units("written", "written")).complete
    assert gold.need(units(*["no_sql"] * 5)).complete  # --max-attempts reached
    assert gold.need({}).attempts == [0, 1]

    pairs = {"have": 0}
    onpolicy = AttemptRule(num_rejects=2, max_attempts=7, wave=2, count=lambda rows: pairs["have"])
    assert onpolicy.need(units(*["candidate"] * 3)).further == [3]  # a wave cut by a crash is finished
    assert onpolicy.need(units(*["candidate"] * 4)).further == [4, 5]
    assert onpolicy.need(units(*["candidate"] * 6)).further == [6]  # within --max-attempts
    pairs["have"] = 2
    assert onpolicy.need(units(*["candidate"] * 3)).further == [3]  # whatever the pairs say
    assert onpolicy.need(units(*["candidate"] * 4)).complete
