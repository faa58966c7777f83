import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from prefgen.cli import cli
from prefgen.config import GenerateConfig
from prefgen.executors import generate
from prefgen.runtime import faults

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "spider_en" / "department_store_alpaca.json"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """One tiny random Qwen3-MoE model for the whole session (built in seconds, offline)."""
    from prefgen.engines.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def sample_data(tmp_path) -> Path:
    """A private copy of the shipped sample (56 real Spider records)."""
    path = tmp_path / "data.json"
    shutil.copy(SAMPLE, path)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFGEN_FAULT", raising=False)
    faults._hits.clear()  # in-process CLI runs share the fault counters
    return tmp_path


def write_records(path: Path, records: list, jsonl: bool = False) -> Path:
    if jsonl:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]


def generate_args(model, data, output, **flags) -> list[str]:
    """`prefgen generate` arguments with small, fast defaults for the tiny model."""
    options = {"num_rejects": 2, "max_new_tokens": 8, "max_samples": 6, "batch_size": 4, "device": "cpu", "seed": 1234}
    options.update(flags)
    args = ["generate", "--base-model", str(model), "--sft-data", str(data), "--output", str(output), "--no-progress"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return args


def run_cli(args: list[str], expect: int = 0):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def query(path, sql: str) -> list[dict]:
    """Rows of a read query on a ledger (or any SQLite file), as dicts."""
    conn = sqlite3.connect(str(path))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def scripted_engine(script):
    """Stands in for the model where a test needs chosen SQL answers (the tiny model writes
    random text): unit (sample, attempt) answers `script(sample, attempt)`. Everything after
    generation (judging, execution, commits, resume) is prefgen's real code, and generation
    goes through the engine boundary's real background batches (prefgen.engines.base.BatchEngine)."""
    from prefgen.engines.base import BatchEngine
    from prefgen.units import Answer

    class ScriptedEngine(BatchEngine):
        device = "cpu"
        adapter_merged = False

        def __init__(self):
            self.generated: list[tuple[int, int]] = []

        def prompt_ids(self, unit) -> list[int]:
            return [unit.sample_index, unit.reject_index]

        def prompt_length(self, unit) -> int:
            return 2

        def generate_tokens(self, units, rows):
            self.generated += [tuple(row) for row in rows]
            return [[0] for _ in units], 0.001

        def answer(self, row, new, seconds):
            return Answer(script(*row), prompt_tokens=2, new_tokens=1, seconds=seconds)

    return ScriptedEngine()


ScriptedEngine = scripted_engine


# Helpers shared by several test files (pytest puts tests/ on sys.path, so `from conftest import ...`).


def start(args, fault=None, **popen):
    """`python -m prefgen ARGS` as a child process (so it can be killed), PREFGEN_FAULT set to `fault`
    (in the environment given as `env`, or this one)."""
    env = {k: v for k, v in (popen.pop("env", None) or os.environ).items() if k != "PREFGEN_FAULT"}
    if fault:
        env["PREFGEN_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "prefgen", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run(args, fault=None):
    """Run `prefgen ARGS` in a child process to its end: (exit code, stdout + stderr)."""
    process = start(args, fault)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout + stderr


def committed(ledger) -> int:
    """Units a ledger holds, polled while its run writes it: 0 while it is not there or its
    tables are being created."""
    if not os.path.exists(ledger):
        return 0
    try:
        return query(ledger, "select count(*) as n from units")[0]["n"]
    except sqlite3.DatabaseError:  # no table yet, or the file half made
        return 0


def ledger_units(out):
    """Every unit row of the ledger beside output `out`, in sample/reject order."""
    return query(str(out) + ".ledger.sqlite", "select * from units order by sample_index, reject_index")


def assert_ledger_agrees_with_file(out):
    """Every written unit (or on-policy pair) has its line at its offset, and every line its row."""
    data = out.read_bytes()
    written = [(u, "reject_index") for u in ledger_units(out) if u["status"] == "written"]
    written += [(p, "pair_index") for p in query(str(out) + ".ledger.sqlite", "select * from pairs")]
    assert sum(row["line_length"] for row, _ in written) == len(data)
    for row, key in written:
        line = data[row["line_offset"] : row["line_offset"] + row["line_length"]]
        assert line == row["line"].encode()
        parsed = orjson.loads(line)
        assert (parsed["sample_index"], parsed[key]) == (row["sample_index"], row[key])
    lines = read_jsonl(out)
    keys = {(line["sample_index"], line.get("reject_index", line.get("pair_index"))) for line in lines}
    assert len(lines) == len(written) == len(keys)
    assert data.endswith(b"\n")


# The scripted on-policy run: one question of the sample's department_store database, and answers to it.
DB_ROOT = ROOT / "examples" / "spider_en" / "db"
GOLD = "SELECT product_name, product_price FROM products WHERE product_price > 900"
RIGHT = "SELECT product_name, product_price FROM products WHERE 900 < product_price"  # the filter turned round
SWAPPED = "SELECT product_price, product_name FROM products WHERE product_price > 900"  # Spider: right; BIRD: wrong
RIGHT_TOO = "select product_name , product_price from products where product_price > 900;"
WRONG = "SELECT product_name, product_price FROM products WHERE product_price > 800"
WRONG_TOO = "SELECT product_name FROM products"
FAILS = "SELECT no_such_column FROM products"
REASONED = "The products over 900 are wanted, so:\n```sql\n{sql}\n```"


def scripted(workdir, answers, records=1, **settings):
    """A run whose attempt `a` of every sample answers `answers[a]`; returns (lines, ledger path)."""
    data = write_records(
        workdir / "data.json",
        [{"instruction": f"q{i}", "output": GOLD, "db_id": "department_store"} for i in range(records)],
    )
    options = dict(num_rejects=2, db_root=str(DB_ROOT), device="cpu", pairs="onpolicy", batch_size=3)
    options.update(settings)
    out = workdir / "pairs.jsonl"
    cfg = GenerateConfig.from_flags(base_model="scripted", sft_data=str(data), output=str(out), **options)
    engine = ScriptedEngine(lambda sample, attempt: answers[attempt])
    summary = generate(cfg, ["test"], show_progress=False, engine=engine)
    return summary, (read_jsonl(out) if out.exists() else []), str(out) + ".ledger.sqlite"


def browse_pages(ledger, *urls):
    """`prefgen browse`'s Datasette (its own test client, in process): (status, body) per URL."""
    import asyncio

    from prefgen.ledger.browse import make_datasette

    async def get_all():
        ds = make_datasette(ledger)
        await ds.invoke_startup()
        return [(r.status_code, r.text) for r in [await ds.client.get(url) for url in urls]]

    return asyncio.run(get_all())


# The tests' own home. Every cache prefgen writes (the database variants, the merged adapters)
# and every cache the libraries it drives write under the home directory (Hugging Face,
# torch, triton, vLLM, matplotlib, Chromium's profile, ...) goes to one temporary folder for the
# whole test run instead of the developer's ~/.cache. It is set when pytest starts, before any
# test module is collected (some libraries read these variables when they are imported), and
# the child processes the tests start (`start`, `run`) inherit it with os.environ.
# tests/test_isolation.py proves it; a test may still point one of them elsewhere (monkeypatch).
REAL_HOME = Path.home()
_SAVED_ENV: dict[str, str | None] = {}
_HOMES: list[Path] = []


def home_env(home: Path) -> dict[str, str | None]:
    """The variables that send every cache under `home` (None: unset, so that it follows HOME)."""
    cache = home / ".cache"
    return {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(cache),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "PREFGEN_VARIANT_CACHE": str(cache / "prefgen" / "variants"),
        "PREFGEN_MERGED_CACHE": str(cache / "prefgen" / "merged"),
        "HF_HOME": str(cache / "huggingface"),
        # Hugging Face's own finer overrides would win over HF_HOME: unset, they follow it.
        **dict.fromkeys(
            ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "HF_MODULES_CACHE"]
            + ["HF_ASSETS_CACHE", "HF_XET_CACHE"]
        ),
        "TORCH_HOME": str(cache / "torch"),
        "TRITON_HOME": str(home),
        "TRITON_CACHE_DIR": str(home / ".triton" / "cache"),
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "VLLM_CONFIG_ROOT": str(home / ".config" / "vllm"),
        "MPLCONFIGDIR": str(home / ".config" / "matplotlib"),
    }


def pytest_configure(config):
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="prefgen-tests-home-"))
    _HOMES.append(home)
    for name, value in home_env(home).items():
        _SAVED_ENV[name] = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_unconfigure(config):
    for name, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for home in _HOMES:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def isolated_home() -> Path:
    """The temporary home every test runs in (see pytest_configure); fails fast if it is not."""
    home = Path(os.environ["HOME"])
    assert home in _HOMES and home != REAL_HOME, "the tests' home is not set"
    return home


# Four records, the second far longer than the others (its prompt does not fit a small context).
LONG_TEXT = "SELECT name FROM products WHERE price > 10; Show the address, phone and email. " * 480
RECORDS = [
    {"instruction": "How many products are there?", "output": "SELECT count(*) FROM products"},
    {"instruction": "Name them. " + LONG_TEXT, "output": "SELECT product_name FROM products"},
    {"instruction": "List the staff.", "output": "SELECT staff_name FROM staff"},
    {"instruction": "How many stores are there?", "output": "SELECT count(*) FROM stores"},
]


def finished_run(tiny_model, work: Path, **flags) -> Path:
    """A finished run of the tiny model on a copy of the shipped sample, with --db-root (so
    verdicts and gold checks exist) unless told otherwise: its output."""
    data = work / "data.json"
    shutil.copy(SAMPLE, data)
    out = work / "pairs.jsonl"
    run_cli(generate_args(tiny_model, data, out, **{"num_rejects": 2, "db_root": DB_ROOT, **flags}))
    return out
