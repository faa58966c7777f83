import json
import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from prefgen.cli import cli
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
    goes through the engine boundary's real background batches (prefgen.engines.BatchEngine)."""
    from prefgen.engines import BatchEngine
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
