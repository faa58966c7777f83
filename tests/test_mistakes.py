"""First-day mistakes cost one error message: a refused start leaves the directory as it was and
the corrected command simply runs; a wrong --db-root or model path is refused at once; a full
disk is an `Error:` line, never a traceback; the defaults do not warn about what nobody asked."""

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import DB_ROOT, generate_args, query, read_jsonl, run, run_cli, write_records


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "mistake, message",
    [
        ({"sft_data": "data.csv"}, "data.csv"),
        ({"base_model": "runs/tiny-modle"}, "runs/tiny-modle: no such model directory"),
        ({"db_root": "no-such-dir"}, "--db-root no-such-dir is not a directory"),
        ({"db_root": "empty-dbs"}, "department_store"),
    ],
)
def test_a_refused_start_leaves_nothing_and_the_corrected_command_runs(
    workdir, tiny_model, sample_data, mistake, message
):
    (workdir / "runs").mkdir()
    (workdir / "empty-dbs").mkdir()
    (workdir / "data.csv").write_text("instruction,output\nq,SELECT 1\n")
    right = dict(base_model=tiny_model, sft_data=sample_data, db_root=DB_ROOT)
    before = listing(workdir)
    given = {**right, **mistake}
    args = generate_args(given["base_model"], given["sft_data"], workdir / "out.jsonl", db_root=given["db_root"])
    result = run_cli(args, expect=1)
    assert "Error: " in result.output and message in result.output, result.output
    assert listing(workdir) == before  # no output, ledger or lock file
    result = run_cli(generate_args(right["base_model"], right["sft_data"], workdir / "out.jsonl", db_root=DB_ROOT))
    assert "Generated 12 units" in result.output


def test_a_local_model_path_that_does_not_exist_fails_at_once(workdir, sample_data):
    (workdir / "runs").mkdir()
    started = time.monotonic()
    result = run_cli(generate_args("runs/tiny-modle", sample_data, workdir / "out.jsonl"), expect=1)
    assert time.monotonic() - started < 10  # no hub, no network retries
    assert "--base-model runs/tiny-modle: no such model directory" in result.output
    assert str(workdir / "runs" / "tiny-modle") in result.output  # where it looked


def test_an_input_without_a_record_is_refused(workdir, tiny_model):
    data = write_records(workdir / "data.json", [])
    result = run_cli(generate_args(tiny_model, data, workdir / "out.jsonl"), expect=1)
    assert "holds no record" in result.output
    assert listing(workdir) == ["data.json"]


def test_a_ledger_without_a_committed_unit_takes_the_new_settings(workdir, tiny_model, sample_data):
    out = workdir / "out.jsonl"
    code, output = run(generate_args(tiny_model, sample_data, out, num_rejects=2), fault="after_model_load:raise")
    assert code != 0 and (workdir / "out.jsonl.ledger.sqlite").exists()  # a failure after the ledger was made
    result = run_cli(generate_args(tiny_model, sample_data, out, num_rejects=3, max_samples=2))
    assert "holds no committed unit: started again with these settings" in result.output
    assert "num_rejects (ledger: 2, now: 3)" in result.output
    assert "Generated 6 units" in result.output
    # one that holds work is never replaced
    result = run_cli(generate_args(tiny_model, sample_data, out, num_rejects=2, max_samples=2), expect=1)
    assert "was started with other settings" in result.output


def test_a_rank_with_no_record_has_nothing_to_do_and_merge_takes_its_part(workdir, tiny_model, sample_data):
    out = workdir / "out.jsonl"
    for rank in range(4):  # 3 records over 4 ranks: rank 3 has none
        args = generate_args(tiny_model, sample_data, out, max_samples=3, num_rejects=1, rank=rank, world_size=4)
        assert run_cli(args).exit_code == 0
    assert (workdir / "out.rank3-of-4.jsonl.ledger.sqlite").exists()
    run_cli(["merge", "--output", str(out), "--world-size", "4"])
    assert [line["sample_index"] for line in read_jsonl(out)] == [0, 1, 2]


def test_reused_answers_that_are_not_there_or_not_this_runs_are_refused_before_anything_is_made(
    workdir, tiny_model, sample_data
):
    old = workdir / "old.jsonl"
    run_cli(generate_args(tiny_model, sample_data, old, max_samples=2))
    before = listing(workdir)
    result = run_cli(generate_args(tiny_model, sample_data, workdir / "new.jsonl", reuse_answers="nosuch.jsonl"), 1)
    assert "--reuse-answers nosuch.jsonl: no ledger" in result.output
    args = generate_args(tiny_model, sample_data, workdir / "new.jsonl", max_samples=2, seed=9, reuse_answers=old)
    result = run_cli(args, expect=1)
    assert "were generated otherwise" in result.output and "seed (old: 1234, now: 9)" in result.output
    assert listing(workdir) == before


def test_an_empty_ledger_is_taken_over_even_by_a_larger_cap_and_reuses_nothing(workdir, tiny_model, sample_data):
    out = workdir / "out.jsonl"
    args = generate_args(tiny_model, sample_data, out, max_samples=2, max_new_tokens=8)
    code, _ = run(args, fault="after_model_load:raise")
    assert code != 0
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=2, max_new_tokens=16))
    assert "holds no committed unit" in result.output and "max_new_tokens (ledger: 8, now: 16)" in result.output
    assert not list(workdir.glob("*cap8*"))  # nothing moved aside: there was nothing to keep
    assert query(str(out) + ".ledger.sqlite", "select count(*) as n from units where source = 'reused'")[0]["n"] == 0


def test_the_default_device_says_nothing_on_a_cpu_machine(workdir, tiny_model, sample_data):
    args = generate_args(tiny_model, sample_data, workdir / "out.jsonl", max_samples=1, device=None)
    result = run_cli(args)
    assert "asked for" not in result.output and "Warning" not in result.output
    assert query(str(workdir / "out.jsonl") + ".ledger.sqlite", "select count(*) as n from units")[0]["n"] == 2


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int):
    """A tmpfs of `size_kb` at `folder` (tests run as root); skipped where it cannot be mounted."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("free_kb", [0, 120, 400])
def test_a_full_disk_is_an_error_line_at_any_point_and_the_run_resumes(workdir, tiny_model, sample_data, free_kb):
    reference = workdir / "reference.jsonl"
    run_cli(generate_args(tiny_model, sample_data, reference, max_samples=12, batch_size=2, db_root=DB_ROOT))
    with small_disk(workdir / "disk", 1024) as disk:
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # fill it, then give back `free_kb`
            while True:
                os.write(fd, b"\0" * 4096)
        os.ftruncate(fd, max(os.fstat(fd).st_size - free_kb * 1024, 0))
        os.close(fd)
        args = generate_args(tiny_model, sample_data, disk / "out.jsonl", max_samples=12, batch_size=2, db_root=DB_ROOT)
        for _ in range(2):  # and run again while the disk is still full
            code, output = run(args)
            if code == 0:
                break
            assert code == 1 and "Traceback" not in output, output
            assert "Error: " in output and ("disk is full" in output or "No space left" in output), output
        filler.unlink()
        code, output = run(args)
        assert code == 0, output
        assert sorted(read_jsonl(disk / "out.jsonl"), key=str) == sorted(read_jsonl(reference), key=str)
        shutil.copy(disk / "out.jsonl", workdir / "copy.jsonl")


def test_a_model_taken_as_a_hub_id_says_so_when_it_fails(workdir, sample_data, monkeypatch):
    """`modles/qwen` where no `modles/` exists must be tried as a hub id; when that fails the
    error says it was taken as one and that no local folder of that name is here."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail at once: no network, no retries
    result = run_cli(generate_args("modles/qwen", sample_data, workdir / "out.jsonl"), expect=1)
    assert "cannot load the model modles/qwen" in result.output
    assert f"modles/qwen was taken as a hub id: there is no local folder modles/ in {workdir}" in result.output
    assert "Traceback" not in result.output
