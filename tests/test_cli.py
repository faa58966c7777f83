"""The command line itself: it starts without the heavy libraries, and takes every choice and
default from prefgen.config, which owns them."""

import dataclasses
import subprocess
import sys

import pytest
from conftest import ROOT

from prefgen import config
from prefgen.cli import cli

HEAVY = ("torch", "transformers", "peft", "vllm", "sqlite_utils", "datasette", "pandas")


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["ledger", "status", "--help"]])
def test_help_imports_no_heavy_library(args):
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['prefgen', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('prefgen', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", f"prefgen {' '.join(args)} imported {done.stdout.splitlines()[-1]}"


def test_python_dash_m_prefgen_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "prefgen", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith("prefgen, version ")


def params(command: str) -> dict:
    return {p.name: p for p in cli.commands[command].params}


def test_generate_defaults_are_generate_configs():
    fields = {f.name: f.default for cls in (config.GenerateConfig, config.CheckPolicy) for f in dataclasses.fields(cls)}
    checked = 0
    for name, param in params("generate").items():
        if name in fields and fields[name] is not dataclasses.MISSING:
            # the settings decided from the ledger when not given (e.g. --evaluator): None on the CLI
            expected = None if name in config.UNSET_FIELDS else fields[name]
            assert param.default == expected, name
            checked += 1
    assert checked >= 30
    assert params("generate")["time_limit"].default == config.DEFAULT_TIME_LIMIT
    assert params("generate")["max_rows"].default == config.DEFAULT_MAX_ROWS


def test_choices_are_configs():
    generate = params("generate")
    assert tuple(generate["engine"].type.choices) == config.ENGINE_NAMES
    assert tuple(generate["pairs"].type.choices) == config.PAIR_MODES
    for command in ("generate", "pair"):
        assert tuple(params(command)["answer"].type.choices) == config.ANSWER_MODES
        assert tuple(params(command)["fallback"].type.choices) == config.FALLBACK_MODES
    for command in ("generate", "verify", "pair"):
        assert tuple(params(command)["equivalence"].type.choices) == config.EQUIVALENCE_MODES
        assert params(command)["time_limit"].default == config.DEFAULT_TIME_LIMIT
        assert params(command)["max_rows"].default == config.DEFAULT_MAX_ROWS
    assert tuple(params("export")["fmt"].type.choices) == config.EXPORT_FORMATS
