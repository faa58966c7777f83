"""prefgen's command line. The only place where exceptions become `Error: ...` messages."""

from __future__ import annotations

import functools
import logging
import sys

import click

from prefgen import __version__
from prefgen.errors import Interrupted, PrefgenError

EXIT_INCOMPLETE = 3  # the run ended, but some units are oom/error and wait for the next run


class EchoHandler(logging.Handler):
    """Show prefgen's warnings on stderr as `Warning: ...`."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "Warning: " if record.levelno >= logging.WARNING else ""
        click.echo(prefix + record.getMessage(), err=True)


def setup_logging() -> None:
    log = logging.getLogger("prefgen")
    log.handlers = [EchoHandler()]
    log.setLevel(logging.INFO)
    log.propagate = False


def friendly_errors(command):
    """Turn prefgen's own exceptions into `Error: ...` plus a hint and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Interrupted as exc:
            click.echo(f"Stopped: {exc}", err=True)
            click.echo("Run the same command again to resume where it stopped.", err=True)
            sys.exit(exc.exit_code)
        except PrefgenError as exc:
            message = f"{exc}\nHint: {exc.hint}" if exc.hint else str(exc)
            raise click.ClickException(message) from exc

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="prefgen")
def cli():
    """prefgen: resumable DPO preference data for Text-to-SQL models."""
    setup_logging()


@cli.command()
@click.option("--base-model", required=True, help="Model directory (or hub id where online).")
@click.option("--adapter-path", default="", help="PEFT LoRA adapter directory; empty for none.")
@click.option("--sft-data", required=True, help="Alpaca records: a JSON array (.json) or JSON Lines (.jsonl).")
@click.option("--output", required=True, help="JSONL file the pairs are appended to.")
@click.option("--ledger", default="", help="Ledger path [default: OUTPUT.ledger.sqlite].")
@click.option("--num-rejects", type=int, default=1, show_default=True, help="Rejects per sample (< 1000).")
@click.option("--dedup-rejects", is_flag=True, help="Do not write a reject identical to an earlier one of the sample.")
@click.option("--seed", type=int, default=42, show_default=True, help="Unit seed = seed + sample*1000 + reject.")
@click.option("--max-new-tokens", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True, help="0 means greedy decoding.")
@click.option("--top-p", type=float, default=0.9, show_default=True)
@click.option("--max-samples", type=int, default=0, show_default=True, help="Use the first N records (0 = all).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Rows per generation call.")
@click.option("--device", default="cuda", show_default=True, help="cuda, cuda:N or cpu.")
@click.option("--system", default="", help="Optional system prompt.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@friendly_errors
def generate(no_progress, **options):
    """Generate rejects for every SFT record; run it again to resume.

    \b
    Example:
      prefgen generate --base-model /models/qwen --sft-data data.json \\
        --output pairs.jsonl --num-rejects 3 --batch-size 16 --device cuda
    """
    from prefgen.config import GenerateConfig
    from prefgen.run import generate as run_generate

    cfg = GenerateConfig(**options)
    summary = run_generate(cfg, sys.argv, show_progress=not no_progress)
    counts = ", ".join(f"{status} {n}" for status, n in sorted(summary.counts.items()))
    if summary.done_now == 0:
        click.echo(f"Nothing to do: all {summary.total_units} units are already in the ledger ({counts}).")
    else:
        click.echo(f"Generated {summary.done_now} units; {summary.done_before + summary.done_now}"
                   f"/{summary.total_units} done ({counts}).")
    click.echo(f"Output: {summary.output}\nLedger: {summary.ledger}")
    if not summary.finished:
        click.echo("Some units could not be generated (oom/error): run the same command again to retry them.",
                   err=True)
        sys.exit(EXIT_INCOMPLETE)


@cli.command("tiny-model")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def tiny_model(directory, seed):
    """Build a tiny random Qwen3-MoE model for demos and tests (writes random text).

    \b
    Example:
      prefgen tiny-model models/tiny
    """
    from prefgen.tiny import build_tiny_model

    path = build_tiny_model(directory, seed=seed)
    click.echo(f"Tiny model written to {path} (random weights: its output is random text).")


@cli.command()
@click.option("--output", required=True, help="The JSONL to rebuild.")
@click.option("--ledger", default="", help="Ledger path [default: OUTPUT.ledger.sqlite].")
@friendly_errors
def repair(output, ledger):
    """Rebuild the JSONL from the ledger, which holds every kept reject.

    \b
    Example:
      prefgen repair --output pairs.jsonl
    """
    from prefgen.repair import repair_output

    lines = repair_output(output, ledger)
    click.echo(f"Rebuilt {output} from the ledger: {lines} lines.")


@cli.group()
def ledger():
    """Inspect a ledger."""


@ledger.command()
@click.argument("path", type=click.Path(dir_okay=False))
@friendly_errors
def status(path):
    """Counts by status and units done / total.

    \b
    Example:
      prefgen ledger status pairs.jsonl.ledger.sqlite
    """
    from prefgen.report import status_report

    click.echo(status_report(path))
