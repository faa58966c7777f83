"""The tests write nothing under the developer's home: every cache goes to the tests' own
temporary home (tests/conftest.py, `isolated_home`), in the test process and in the child
processes the tests start."""

import json
import os
import shutil
import sqlite3
from pathlib import Path

import conftest
from conftest import DB_ROOT, read_jsonl, run, run_cli

GOLD = "SELECT product_price FROM products WHERE product_name = 'black jeans'"
COINCIDENCE = "SELECT product_price FROM products WHERE product_id = 3"  # right on the shipped database only


def fresh_db_root(workdir: Path, name: str) -> Path:
    """A copy of the shipped department_store database with one table more: its own digest, so
    variants of it are built (where a leak would write them), not found where an earlier test made them."""
    root = workdir / name
    (root / "department_store").mkdir(parents=True)
    target = root / "department_store" / "department_store.sqlite"
    shutil.copy(DB_ROOT / "department_store" / "department_store.sqlite", target)
    with sqlite3.connect(target) as conn:
        conn.execute(f"create table {name} (x)")
    conn.close()
    return root


def verify_args(workdir: Path, db_root: Path) -> list[str]:
    pairs = workdir / "pairs.jsonl"
    line = {"instruction": "Price of the black jeans?", "input": "", "chosen": GOLD, "rejected": COINCIDENCE}
    pairs.write_text(json.dumps({**line, "db_id": "department_store"}) + "\n")
    return ["verify", str(pairs), "--db-root", str(db_root), "--output", str(workdir / f"{db_root.name}.jsonl")]


def sqlite_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*.sqlite")} if root.is_dir() else set()


def snapshot(root: Path) -> dict[str, int]:
    """Every file under `root` with its modification time (empty when there is no such folder)."""
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_the_tests_run_in_a_home_of_their_own(isolated_home):
    assert conftest.REAL_HOME != isolated_home and Path.home() == isolated_home
    for name in ("XDG_CACHE_HOME", "HF_HOME", "TORCH_HOME", "TRITON_CACHE_DIR", "VLLM_CACHE_ROOT"):
        assert Path(os.environ[name]).is_relative_to(isolated_home), name
    for name in ("PREFGEN_VARIANT_CACHE", "PREFGEN_MERGED_CACHE"):
        assert Path(os.environ[name]).is_relative_to(isolated_home / ".cache" / "prefgen"), name
    assert "HF_HUB_CACHE" not in os.environ and "TRANSFORMERS_CACHE" not in os.environ


def test_variants_are_built_in_the_tests_home_not_the_users(isolated_home, workdir, monkeypatch):
    users = conftest.REAL_HOME / ".cache" / "prefgen"
    before = snapshot(users)
    # In process, with the cache the tests set (PREFGEN_VARIANT_CACHE).
    cache = Path(os.environ["PREFGEN_VARIANT_CACHE"])
    built_before = sqlite_files(cache)
    run_cli(verify_args(workdir, fresh_db_root(workdir, "in_process")))
    assert sqlite_files(cache) - built_before, "verify built the variants of a database it had not seen"
    assert read_jsonl(workdir / "in_process.jsonl")[0]["verdict_detail"] == "differs on variant 1 of 3"
    # A child process, as the kill tests start them, and with no PREFGEN_VARIANT_CACHE: the
    # default, under HOME, is the tests' home too.
    monkeypatch.delenv("PREFGEN_VARIANT_CACHE")
    default = isolated_home / ".cache" / "prefgen" / "variants"
    built_before = sqlite_files(default)
    code, output = run(verify_args(workdir, fresh_db_root(workdir, "child")))
    assert code == 0, output
    assert sqlite_files(default) - built_before, "the child built its variants under the tests' HOME"
    after = snapshot(users)
    assert after == before, f"the tests wrote into {users}: {sorted(set(after.items()) - set(before.items()))}"
