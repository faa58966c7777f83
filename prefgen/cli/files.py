"""The commands that read and write whole files: export, verify, pair, merge, repair, tiny-model."""

from __future__ import annotations

import click

from prefgen.cli.options import check_options, default, pair_options
from prefgen.cli.terminal import friendly_errors
from prefgen.config import EXPORT_FORMATS


@click.command("tiny-model")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def tiny_model(directory, seed):
    """Build a tiny random Qwen3-MoE model for demos and tests (writes random text).

    \b
    Example:
      prefgen tiny-model models/tiny
    """
    from prefgen.engines.tiny import build_tiny_model

    path = build_tiny_model(directory, seed=seed)
    click.echo(f"Tiny model written to {path} (random weights: its output is random text).")


@click.command()
@click.option(
    "--output",
    required=True,
    help="The JSONL to rebuild (a .json output: its journal, then its JSON array).",
)
@click.option("--ledger", default="", help="Ledger path [default: OUTPUT.ledger.sqlite].")
@friendly_errors
def repair(output, ledger):
    """Rebuild the JSONL from the ledger, which holds every kept reject.

    \b
    Example:
      prefgen repair --output pairs.jsonl
    """
    from prefgen.tools.repair import repair_output

    lines = repair_output(output, ledger)
    click.echo(f"Rebuilt {output} from the ledger: {lines} lines.")


@click.command()
@click.option(
    "--output",
    required=True,
    help="The merged JSONL to write (the --output the ranks were given; a .json name gets one JSON array).",
)
@click.option("--world-size", type=int, required=True, help="How many ranks the run was split into.")
@friendly_errors
def merge(output, world_size):
    """Combine the rank parts of a torchrun / Slurm run into one JSONL, in sample order.

    Refuses when a part is missing, incomplete or changed behind prefgen's back.

    \b
    Example:
      prefgen merge --output pairs.jsonl --world-size 8
    """
    from prefgen.tools.merge import merge_parts

    count = merge_parts(output, world_size)
    click.echo(f"Merged {world_size} parts into {output}: {count} lines.")


@click.command()
@click.argument("pairs", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True)
@click.option("--to", "directory", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--name", default="", help="Dataset name [default: the file's name before its first dot].")
@click.option("--system", default=None, help="System prompt [default: the one the ledger's run used].")
@click.option(
    "--skip-suspect", is_flag=True, help="Leave out the pairs whose gold is flagged gold_suspect (--gold-suspect keep)."
)
@friendly_errors
def export(pairs, fmt, directory, name, system, skip_suspect):
    """Export a prefgen JSONL for LLaMA-Factory (alpaca or sharegpt) or TRL.

    PAIRS is a run's output: JSON Lines, or a .json output's JSON array (its journal until
    the run is complete). kto (TRL KTOTrainer) and rewards (graded: 1 correct, 0.1 executes
    but wrong, 0 fails) write one row per side of a pair, each (prompt, completion) once.

    \b
    Example:
      prefgen export pairs.jsonl --format llamafactory --to LLaMA-Factory/data
      prefgen export pairs.jsonl --format trl --to exports/
      prefgen export pairs.jsonl --format kto --to exports/
    """
    from prefgen.tools.export import export_pairs

    if system is None:
        system = run_system_prompt(pairs)
    summary = export_pairs(pairs, fmt, directory, name, system, skip_suspect)
    noun = "rows" if fmt in ("kto", "rewards") else "pairs"  # one row per side of a pair
    click.echo(f"Wrote {summary.written} {noun} to {summary.path}")
    if summary.dataset_info:
        click.echo(f"Dataset entry {summary.path.stem!r} in {summary.dataset_info}")
    for reason, count in sorted(summary.skipped.items()):
        click.echo(f"Skipped {count} rows: {reason}", err=True)


def run_system_prompt(pairs: str) -> str:
    """The --system of the run that wrote `pairs`, read from its ledger if it has one."""

    from prefgen.errors import LedgerError
    from prefgen.ledger.store import Ledger
    from prefgen.paths import ledger_of

    try:
        path = ledger_of(pairs)
    except LedgerError:
        return ""
    ledger = Ledger(path, readonly=True)
    try:
        return (ledger.fingerprint() or {}).get("system", "")
    finally:
        ledger.close()


@click.command()
@click.argument("pairs", type=click.Path(dir_okay=False))
@click.option("--db-root", required=True, type=click.Path(file_okay=False), help="DIR/<db_id>/<db_id>.sqlite")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="JSONL of the kept pairs.")
@check_options
@friendly_errors
def verify(pairs, output, **options):
    """Judge an existing preference file by executing gold and rejected SQL.

    \b
    Example:
      prefgen verify pairs.jsonl --db-root spider/database --output verified.jsonl
    """
    from prefgen.config import CheckPolicy
    from prefgen.resume.settings import resolve_judging
    from prefgen.tools.verify import format_summary, verify_file

    policy = resolve_judging(CheckPolicy(**options), onpolicy=False)
    summary = verify_file(pairs, output, policy)
    click.echo(format_summary(summary))
    click.echo(f"Kept pairs written to {output}")


@click.command()
@click.argument("candidates", type=click.Path(dir_okay=False))
@click.option("--db-root", required=True, type=click.Path(file_okay=False), help="DIR/<db_id>/<db_id>.sqlite")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="JSONL of the pairs.")
@click.option(
    "--num-rejects",
    "num_pairs",
    type=int,
    default=default("num_rejects"),
    show_default=True,
    help="Pairs per record, at most.",
)
@pair_options
@check_options
@friendly_errors
def pair(candidates, output, num_pairs, answer, fallback, **options):
    """Form on-policy pairs from answers generated elsewhere.

    CANDIDATES is JSON Lines: one line per answer, the record's fields (instruction, input,
    output = gold, db_id) plus `answer`; the lines of one record consecutive. Answers are
    judged by execution and paired as `generate --pairs onpolicy` pairs them.

    \b
    Example:
      prefgen pair answers.jsonl --db-root spider/database --output pairs.jsonl --num-rejects 2
    """
    from prefgen.config import CheckPolicy
    from prefgen.resume.settings import resolve_judging
    from prefgen.tools.pair import format_pair_summary, pair_file

    policy = resolve_judging(CheckPolicy(**options), onpolicy=True)  # on-policy: only verified answers pair
    summary = pair_file(candidates, output, policy, num_pairs, answer, fallback)
    click.echo(format_pair_summary(summary))
    click.echo(f"Pairs written to {output}")
