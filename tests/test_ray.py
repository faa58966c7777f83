"""`--executor ray` on a simulated cluster (ray.cluster_utils.Cluster: a head and two worker
nodes with a fake GPU each, in one process tree on this machine): the same lines as a local run,
a worker node killed mid-run, the driver killed with SIGKILL and resumed, a record too long.
Run by `make check-ray` in .venv-ray."""

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import orjson
import pytest
from conftest import RECORDS, committed, generate_args, ledger_units, query, read_jsonl, run_cli, start, write_records

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

FAST_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}


@pytest.fixture(scope="session")
def ray_tmp():
    """Ray's files in a short directory of their own (its sockets' paths are length-limited)."""
    path = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = path
    yield path
    if previous is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = previous
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(ray_tmp):
    """A head (6 logical CPUs: judging, no GPU) and two worker nodes with one fake GPU each."""
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 6, "include_dashboard": False, "_system_config": FAST_DEATH}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def ray_flags(cluster, **flags) -> dict:
    return {"executor": "ray", "ray_address": cluster.address, "gpus_per_worker": 1, "workers": "1-2", **flags}


def assert_same_as_local(out, local, ordered: bool = True) -> None:
    """Each line byte-identical to the local run's, in (sample, reject) order; the same units."""
    lines, expected = out.read_bytes().splitlines(), local.read_bytes().splitlines()
    assert sorted(lines) == sorted(expected) and len(lines) == len(set(lines))
    keys = [(line["sample_index"], line.get("reject_index", line.get("pair_index"))) for line in read_jsonl(out)]
    if ordered:
        assert keys == sorted(keys)
    fields = ("sample_index", "reject_index", "seed", "status", "sql", "raw_answer", "verdict")
    got = [{k: u[k] for k in fields} for u in ledger_units(out)]
    assert got == [{k: u[k] for k in fields} for u in ledger_units(local)]
    once = query(str(out) + ".ledger.sqlite", "select count(*) as n from units group by sample_index, reject_index")
    assert {row["n"] for row in once} == {1}


def test_a_ray_run_writes_the_lines_of_a_local_run(cluster, workdir, tiny_model, sample_data):
    flags = dict(max_samples=8, num_rejects=3, dedup_rejects=True)
    local, out = workdir / "local.jsonl", workdir / "ray.jsonl"
    run_cli(generate_args(tiny_model, sample_data, local, **flags))
    result = run_cli(generate_args(tiny_model, sample_data, out, **ray_flags(cluster, block_units=4, **flags)))
    assert "Generated 24 units; 24/24 done" in result.output
    assert_same_as_local(out, local)
    events = query(str(out) + ".ledger.sqlite", "select kind from events where kind = 'model_loaded'")
    assert 1 <= len(events) <= 2
    assert "Nothing to do" in run_cli(generate_args(tiny_model, sample_data, out, **flags)).output  # local resumes it
    status = run_cli(["ledger", "status", str(out)]).output
    assert "24" in status


def test_executed_onpolicy_with_further_attempts_as_locally(cluster, workdir, tiny_model, sample_data):
    db = Path(__file__).resolve().parent.parent / "examples" / "spider_en" / "db"
    flags = dict(max_samples=6, num_rejects=2, max_attempts=4, db_root=str(db), pairs="onpolicy", fallback="gold")
    local, out = workdir / "local.jsonl", workdir / "ray.jsonl"
    run_cli(generate_args(tiny_model, sample_data, local, **flags))
    run_cli(generate_args(tiny_model, sample_data, out, **ray_flags(cluster, block_units=3, **flags)))
    assert_same_as_local(out, local)
    assert len(ledger_units(out)) > 12  # further attempts were made, in waves
    assert query(str(out) + ".ledger.sqlite", "select count(*) as n from pairs")[0]["n"] > 0


def test_answers_reused_on_ray_as_locally(cluster, workdir, tiny_model, sample_data):
    """--reuse-answers on Ray: each worker reads OLD's answers (a chunk of samples at a time) and
    loads no model; the lines are a fresh local run's with the new judging."""
    flags = dict(max_samples=8, num_rejects=2)
    old, fresh, out = workdir / "old.jsonl", workdir / "fresh.jsonl", workdir / "ray.jsonl"
    run_cli(generate_args(tiny_model, sample_data, old, **flags))
    run_cli(generate_args(tiny_model, sample_data, fresh, dedup_rejects=True, **flags))
    ray_run = ray_flags(cluster, block_units=4, dedup_rejects=True, reuse_answers=str(old), **flags)
    result = run_cli(generate_args(tiny_model, sample_data, out, **ray_run))
    assert "Answers  16 reused from an earlier run, 0 generated;" in result.output
    assert_same_as_local(out, fresh)
    sources = query(str(out) + ".ledger.sqlite", "select distinct source from units")
    assert sources == [{"source": "reused"}]
    loaded = [orjson.loads(row["detail"]) for row in query(str(out) + ".ledger.sqlite", LOADED)]
    assert loaded and {detail["device"] for detail in loaded} == {"none (answers reused)"}


LOADED = "select detail from events where kind = 'model_loaded'"
RETRIED = "select detail from events where kind = 'block_retried'"


def test_a_worker_node_killed_mid_run_costs_its_block_only(cluster, workdir, tiny_model, sample_data):
    flags = dict(max_samples=48, num_rejects=2, max_new_tokens=16)  # long enough to outlive the kill
    local, out = workdir / "local.jsonl", workdir / "ray.jsonl"
    run_cli(generate_args(tiny_model, sample_data, local, **flags))
    env = {"RAY_ADDRESS": cluster.address, "PREFGEN_RAY_WAIT_S": "120"}
    args = generate_args(tiny_model, sample_data, out, **ray_flags(cluster, ray_address=None, block_units=4, **flags))
    process = start(args, env={**os.environ, **env})
    wait_for_units(out, process)
    victim = next(node for node in cluster.worker_nodes)
    cluster.remove_node(victim, allow_graceful=False)
    cluster.add_node(num_cpus=1, num_gpus=1)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert_same_as_local(out, local)
    assert "engine worker lost" in stderr, stderr
    retried = [orjson.loads(row["detail"]) for row in query(str(out) + ".ledger.sqlite", RETRIED)]
    assert retried, "the lost worker's blocks were not queued again"
    assert sum(event["counted"] for event in retried) == 1  # the one it was generating, not the one behind


def test_the_driver_killed_resumes_and_leaves_no_ray_behind(cluster, workdir, tiny_model, sample_data, ray_tmp):
    flags = dict(max_samples=16, num_rejects=2, max_new_tokens=16, dedup_rejects=True)
    local, out = workdir / "local.jsonl", workdir / "ray.jsonl"
    run_cli(generate_args(tiny_model, sample_data, local, **flags))
    own = {"executor": "ray", "workers": "1", "block_units": 4}  # a Ray of its own: no RAY_ADDRESS
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = start(generate_args(tiny_model, sample_data, out, **{**flags, **own}), env=env)
    wait_for_units(out, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert_gone(process.pid)
    done = len(ledger_units(out))
    assert 0 < done < 32
    result = run_cli(generate_args(tiny_model, sample_data, out, **ray_flags(cluster, **flags)))
    assert f"Generated {32 - done} units; 32/32 done" in result.output
    assert_same_as_local(out, local)


def test_a_ray_run_in_progress_is_watched_through_its_ledger(cluster, workdir, tiny_model, sample_data):
    """`ledger status` on a Ray run in progress: running, units committed, a rate and an ETA."""

    out = workdir / "ray.jsonl"
    flags = ray_flags(cluster, ray_address=None, block_units=4, max_samples=12, num_rejects=2, max_new_tokens=8)
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    process = start(generate_args(tiny_model, sample_data, out, **flags), fault="after_commit:sleep@2", env=env)
    try:
        wait_for_units(out, process)
        time.sleep(1)  # the second commit done, the driver pauses (holding the run) before the rest
        status = orjson.loads(run_cli(["ledger", "status", str(out), "--json"]).output)
        assert status["runs"][-1]["status"] == "running" and process.poll() is None
        assert 0 < status["units"]["done"] < 24 and status["units"]["total"] == 24
        assert status["eta_s"] is not None and status["throughput"]["units_per_s"]
    finally:
        process.kill()
        process.communicate()


def test_a_prompt_too_long_costs_its_units_only(cluster, workdir, tiny_model):
    records = [{**r, "instruction": r["instruction"][:400]} for r in RECORDS]
    data = write_records(workdir / "data.json", records)
    flags = dict(max_samples=0, max_model_len=64)
    local, out = workdir / "local.jsonl", workdir / "ray.jsonl"
    run_cli(generate_args(tiny_model, data, local, **flags))
    run_cli(generate_args(tiny_model, data, out, **ray_flags(cluster, **flags)))
    assert_same_as_local(out, local)
    assert [u["status"] for u in ledger_units(out) if u["sample_index"] == 1] == ["too_long", "too_long"]


def test_local_flags_are_refused_with_ray(workdir, tiny_model, sample_data):
    out = workdir / "out.jsonl"
    refused = (
        ({"world_size": 2}, "--world-size"),
        ({"overlap": True}, "--overlap"),
        ({"exec_workers": 2}, "--exec-workers"),
    )
    for flag, said in refused:
        result = run_cli(generate_args(tiny_model, sample_data, out, executor="ray", **flag), expect=1)
        assert said in result.output
    result = run_cli(generate_args(tiny_model, sample_data, out, workers="2"), expect=1)
    assert "--workers is a Ray setting" in result.output


def test_without_ray_installed_the_error_names_the_extra(workdir, tiny_model, sample_data, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    result = run_cli(generate_args(tiny_model, sample_data, workdir / "out.jsonl", executor="ray"), expect=1)
    assert "pip install 'prefgen[ray]'" in result.output
    assert not (workdir / "out.jsonl.ledger.sqlite").exists()


def wait_for_units(out, process, timeout: float = 240) -> None:
    """Wait until the run has committed some units (it must still be running)."""
    ledger = str(out) + ".ledger.sqlite"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if committed(ledger):
            return
        time.sleep(0.1)
    raise AssertionError("no unit committed in time")


def assert_gone(pid: int, timeout: float = 30) -> None:
    """No process is left carrying the killed run's reaper token (its Ray: gcs_server, raylet, workers)."""
    needle = f"PREFGEN_RUN_TOKEN={pid}-".encode()
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if any(v.startswith(needle) for v in (entry / "environ").read_bytes().split(b"\0")):
                        left.append(entry.name)
                except OSError:
                    continue
        if not left:
            return
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.5)


def test_workers_the_cluster_cannot_place_are_a_clear_error(cluster, workdir, tiny_model, sample_data, monkeypatch):
    monkeypatch.setenv("PREFGEN_RAY_WAIT_S", "3")
    flags = ray_flags(cluster, gpus_per_worker=4, workers="1")
    result = run_cli(generate_args(tiny_model, sample_data, workdir / "out.jsonl", **flags), expect=1)
    assert "only 0 of the 1 engine workers" in result.output and "each asks 4 GPU(s)" in result.output
