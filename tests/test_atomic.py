"""files/atomic.py: a file written by rename is whole or untouched, and no temporary file stays."""

import errno
import os

import pytest
from conftest import run_cli, write_records

from prefgen.errors import OutputError
from prefgen.files.atomic import atomic_write


def test_the_new_bytes_replace_the_old_ones_when_the_block_ends(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    with atomic_write(target) as handle:
        handle.write(b"new ")
        handle.write(b"line\n")
        assert target.read_bytes() == b"old\n"  # nothing shows before the end
    assert target.read_bytes() == b"new line\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target, ".verifying") as handle:
            handle.write(b"half of it")
            raise RuntimeError("the input went bad")
    assert target.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_a_full_disk_is_an_output_error_and_changes_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError) as info:
        with atomic_write(target) as handle:
            handle.write(b"new\n")
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert target.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_a_new_file_is_not_created_when_the_write_fails(tmp_path):
    target = tmp_path / "new.jsonl"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as handle:
            handle.write(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_an_export_that_meets_a_bad_line_keeps_the_previous_export(workdir):
    pairs = write_records(
        workdir / "pairs.jsonl",
        [{"instruction": "q", "input": "", "chosen": "SELECT 1", "rejected": "SELECT 2"}],
        jsonl=True,
    )
    run_cli(["export", str(pairs), "--format", "trl", "--to", "out"])
    before = (workdir / "out" / "pairs.jsonl").read_bytes()
    with open(pairs, "ab") as handle:
        handle.write(b"{not json\n")
    result = run_cli(["export", str(pairs), "--format", "trl", "--to", "out"], expect=1)
    assert result.output.startswith(f"Error: {pairs}: line 2 is not JSON")
    assert (workdir / "out" / "pairs.jsonl").read_bytes() == before
    assert sorted(os.listdir(workdir / "out")) == ["pairs.jsonl"]
