"""prefgen's command line. The only place where exceptions become `Error: ...` messages."""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading

import click

from prefgen import __version__
from prefgen.config import EQUIVALENCE_MODES
from prefgen.errors import Interrupted, PrefgenError
from prefgen.paths import ledger_of

EXIT_INCOMPLETE = 3  # the run ended, but some units are oom/error and wait for the next run


class EchoHandler(logging.Handler):
    """Show prefgen's warnings on stderr as `Warning: ...`."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "Warning: " if record.levelno >= logging.WARNING else ""
        click.echo(prefix + record.getMessage(), err=True)


def setup_logging() -> None:
    """prefgen's own messages go to stderr; the libraries' warnings (deprecations, advice from
    torch, transformers or vLLM) do not reach the user's terminal."""
    import warnings

    log = logging.getLogger("prefgen")
    log.handlers = [EchoHandler()]
    log.setLevel(logging.INFO)
    log.propagate = False
    warnings.filterwarnings("ignore")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def friendly_errors(command):
    """Turn prefgen's own exceptions into `Error: ...` plus a hint and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Interrupted as exc:
            click.echo(f"Stopped: {exc}", err=True)
            click.echo("Run the same command again to resume where it stopped.", err=True)
            if exc.immediate and threading.active_count() > 1:
                # A batch may still be generating in another thread: everything committed is
                # safe on disk, so leave at once rather than wait for it.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
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


class BatchSize(click.ParamType):
    """A positive integer or `auto`."""

    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)


class DedupMode(click.ParamType):
    """exact or sql; true/false from a config file mean exact / off."""

    name = "exact|sql"

    def convert(self, value, param, ctx):
        if value is True:
            return "exact"
        if value in (False, None, ""):
            return ""
        if value in ("exact", "sql"):
            return value
        self.fail(f"{value!r} is not exact or sql", param, ctx)


def load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Read a YAML run config into the command's defaults: flags on the command line win."""
    if not value:
        return value
    from prefgen.config import read_config_file

    try:
        settings = read_config_file(value, {p.name for p in ctx.command.params if p.name != "config"})
    except PrefgenError as exc:
        raise click.BadParameter(f"{exc} ({exc.hint})" if exc.hint else str(exc), ctx, param) from exc
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


def check_options(command):
    """The flags that turn execution verdicts into keep / drop, shared by generate and verify."""
    options = [
        click.option("--db-field", default="db_id", show_default=True, help="Record field holding the database id."),
        click.option(
            "--equivalence",
            type=click.Choice(EQUIVALENCE_MODES),
            default="lenient",
            show_default=True,
            help="Drop rejects whose result equals the gold's under this comparison.",
        ),
        click.option(
            "--drop-timeout/--keep-timeout",
            default=None,
            help="Whether an answer that ran out of time is dropped or kept as a reject "
            "[default: kept, with on-policy pairs dropped].",
        ),
        click.option(
            "--drop-unverifiable/--keep-unverifiable",
            default=None,
            help="Whether an answer that cannot be judged is dropped or kept as a reject "
            "[default: kept, with on-policy pairs dropped].",
        ),
        click.option("--time-limit", type=float, default=5.0, show_default=True, help="Seconds per query."),
        click.option("--max-rows", type=int, default=100_000, show_default=True, help="Rows fetched per query."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def pair_options(command):
    """How on-policy pairs are made, shared by generate and pair."""
    options = [
        click.option(
            "--answer",
            type=click.Choice(["sql", "full"]),
            default="sql",
            show_default=True,
            help="On-policy pairs hold the extracted SQL, or the whole answer (reasoning included).",
        ),
        click.option(
            "--fallback",
            type=click.Choice(["none", "gold"]),
            default="none",
            show_default=True,
            help="A sample with wrong answers but no correct one: no pair, or the gold as chosen (--answer sql).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=load_config,
    help="YAML file of settings (keys are the flag names); flags override it.",
)
@click.option("--base-model", required=True, help="Model directory (or hub id where online).")
@click.option(
    "--engine",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="transformers (prefgen's own decode loop) or vllm (pip install 'prefgen[vllm]').",
)
@click.option(
    "--batch-invariant",
    is_flag=True,
    help="vllm: the same text whatever the batch (VLLM_BATCH_INVARIANT=1), so a resumed run is byte-identical on GPUs.",
)
@click.option(
    "--max-model-len", type=int, default=0, help="vllm: context the KV cache is sized for [default: the model's]."
)
@click.option(
    "--gpu-memory-utilization",
    type=float,
    default=0.9,
    show_default=True,
    help="vllm: share of GPU memory for weights and KV cache.",
)
@click.option("--adapter-path", default="", help="PEFT LoRA adapter directory; empty for none.")
@click.option("--sft-data", required=True, help="Alpaca records: a JSON array (.json) or JSON Lines (.jsonl).")
@click.option("--output", required=True, help="JSONL file the pairs are appended to.")
@click.option("--ledger", default="", help="Ledger path [default: OUTPUT.ledger.sqlite].")
@click.option("--num-rejects", type=int, default=1, show_default=True, help="Rejects per sample (< 1000).")
@click.option(
    "--dedup-rejects",
    type=DedupMode(),
    is_flag=False,
    flag_value="exact",
    default="",
    help="Do not write a reject equal to an earlier one of the sample: exact text (the default "
    "when given alone) or sql (equal after SQL normalization).",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Unit seed = seed + sample*1000 + reject.")
@click.option("--max-new-tokens", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True, help="0 means greedy decoding.")
@click.option("--top-p", type=float, default=0.9, show_default=True)
@click.option("--max-samples", type=int, default=0, show_default=True, help="Use the first N records (0 = all).")
@click.option(
    "--batch-size",
    type=BatchSize(),
    default="8",
    show_default=True,
    help="Rows per generation call, or 'auto' (the largest that fits, backing off on OOM).",
)
@click.option(
    "--max-batch-tokens",
    type=int,
    default=0,
    show_default=True,
    help="Bound on rows x (longest prompt + max-new-tokens) per batch (0 = none).",
)
@click.option(
    "--lookahead",
    type=int,
    default=32,
    show_default=True,
    help="Samples per window in which units are grouped by prompt length (1 = none).",
)
@click.option("--device", default="cuda", show_default=True, help="cuda, cuda:N or cpu.")
@click.option("--system", default="", help="Optional system prompt.")
@click.option(
    "--overlap/--no-overlap",
    default=None,
    help="Judge and commit a batch while the next one generates [default: on for CUDA, off on CPU].",
)
@click.option(
    "--rank",
    type=int,
    default=0,
    envvar="RANK",
    show_default=True,
    help="This process's share: samples with index % world-size == rank (set by torchrun).",
)
@click.option(
    "--world-size",
    type=int,
    default=1,
    envvar="WORLD_SIZE",
    show_default=True,
    help="Number of processes sharing the run (set by torchrun).",
)
@click.option(
    "--max-attempts",
    type=int,
    default=0,
    help="Keep sampling a sample until it has --num-rejects kept rejects or this many attempts "
    "[default: --num-rejects, i.e. no further attempts].",
)
@click.option(
    "--db-root",
    default="",
    help="Execute gold and rejects against DIR/<db_id>/<db_id>.sqlite and keep only rejects "
    "with a different result (verdict in the ledger and the JSONL).",
)
@check_options
@click.option(
    "--exec-workers", type=int, default=0, help="Processes executing SQL for --db-root [default: min(4, cores/2)]."
)
@click.option(
    "--pairs",
    type=click.Choice(["gold", "onpolicy"]),
    default="gold",
    show_default=True,
    help="gold: the gold query is chosen; onpolicy: the model's own correct answer is chosen and "
    "its wrong one rejected (needs --db-root).",
)
@pair_options
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@friendly_errors
def generate(no_progress, **options):
    """Generate rejects for every SFT record; run it again to resume.

    \b
    Example:
      prefgen generate --base-model /models/qwen --sft-data data.json \\
        --output pairs.jsonl --num-rejects 3 --batch-size 16 --device cuda
      prefgen generate --config run.yaml --batch-size 4
    """
    from prefgen.config import GenerateConfig
    from prefgen.run import generate as run_generate

    cfg = GenerateConfig(**options)
    summary = run_generate(cfg, sys.argv, show_progress=not no_progress)
    counts = ", ".join(f"{status} {n}" for status, n in sorted(summary.counts.items()))
    if summary.done_now == 0:
        click.echo(f"Nothing to do: all {summary.total_units} units are already in the ledger ({counts}).")
    else:
        click.echo(
            f"Generated {summary.done_now} units; {summary.done_before + summary.done_now}"
            f"/{summary.total_units} done ({counts})."
        )
    click.echo(f"Output: {summary.output}\nLedger: {summary.ledger}")
    if not summary.finished:
        click.echo("Some units could not be generated (oom/error): run the same command again to retry them.", err=True)
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
    from prefgen.engines.tiny import build_tiny_model

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
    from prefgen.files.repair import repair_output

    lines = repair_output(output, ledger)
    click.echo(f"Rebuilt {output} from the ledger: {lines} lines.")


@cli.command()
@click.option("--output", required=True, help="The merged JSONL to write (the --output the ranks were given).")
@click.option("--world-size", type=int, required=True, help="How many ranks the run was split into.")
@friendly_errors
def merge(output, world_size):
    """Combine the rank parts of a torchrun / Slurm run into one JSONL, in sample order.

    Refuses when a part is missing, incomplete or changed behind prefgen's back.

    \b
    Example:
      prefgen merge --output pairs.jsonl --world-size 8
    """
    from prefgen.files.merge import merge_parts

    count = merge_parts(output, world_size)
    click.echo(f"Merged {world_size} parts into {output}: {count} lines.")


@cli.command()
@click.argument("pairs", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["llamafactory", "sharegpt", "trl"]), required=True)
@click.option("--to", "directory", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--name", default="", help="Dataset name [default: the file's name before its first dot].")
@click.option("--system", default=None, help="System prompt [default: the one the ledger's run used].")
@friendly_errors
def export(pairs, fmt, directory, name, system):
    """Export a prefgen JSONL for LLaMA-Factory (alpaca or sharegpt) or TRL.

    \b
    Example:
      prefgen export pairs.jsonl --format llamafactory --to LLaMA-Factory/data
      prefgen export pairs.jsonl --format trl --to exports/
    """
    from prefgen.files.export import export_pairs

    if system is None:
        system = run_system_prompt(pairs)
    summary = export_pairs(pairs, fmt, directory, name, system)
    click.echo(f"Wrote {summary.written} pairs to {summary.path}")
    if summary.dataset_info:
        click.echo(f"Dataset entry {summary.path.stem!r} in {summary.dataset_info}")
    for reason, count in sorted(summary.skipped.items()):
        click.echo(f"Skipped {count} rows: {reason}", err=True)


def run_system_prompt(pairs: str) -> str:
    """The --system of the run that wrote `pairs`, read from its ledger if it is there."""
    from pathlib import Path

    import orjson

    from prefgen.ledger.store import Ledger
    from prefgen.paths import LEDGER_SUFFIX

    path = Path(pairs + LEDGER_SUFFIX)
    if not path.exists():
        return ""
    ledger = Ledger(path, readonly=True)
    try:
        return orjson.loads(ledger.meta("fingerprint") or "{}").get("system", "")
    finally:
        ledger.close()


@cli.command()
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
    from prefgen.files.verify import format_summary, verify_file

    policy = CheckPolicy(**options)
    summary = verify_file(pairs, output, policy)
    click.echo(format_summary(summary))
    click.echo(f"Kept pairs written to {output}")


@cli.command()
@click.argument("candidates", type=click.Path(dir_okay=False))
@click.option("--db-root", required=True, type=click.Path(file_okay=False), help="DIR/<db_id>/<db_id>.sqlite")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="JSONL of the pairs.")
@click.option("--num-rejects", "num_pairs", type=int, default=1, show_default=True, help="Pairs per record, at most.")
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
    from prefgen.files.pair import format_pair_summary, pair_file

    for name in ("drop_timeout", "drop_unverifiable"):  # on-policy: only verified answers pair
        options[name] = True if options[name] is None else options[name]
    summary = pair_file(candidates, output, CheckPolicy(**options), num_pairs, answer, fallback)
    click.echo(format_pair_summary(summary))
    click.echo(f"Pairs written to {output}")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (localhost only by default)."
)
@click.option("--port", type=int, default=8001, show_default=True)
@friendly_errors
def browse(path, host, port):
    """Look at a run in the browser (Datasette, read-only): dashboard, pairs, samples, failures.

    PATH is the run's output JSONL or its ledger. Safe beside a run that is writing.

    \b
    Example:
      prefgen browse runs/demo.jsonl            # then open http://127.0.0.1:8001/-/dashboards/run
      ssh -L 8001:localhost:8001 gpu-box        # from your laptop, for a run on a remote machine
    """
    from prefgen.ledger.browse import prepare, serve

    ledger = ledger_of(path)
    ds = prepare(ledger)
    click.echo(f"Serving {ledger} read-only at http://{host}:{port}/-/dashboards/run (Ctrl-C to stop)")
    serve(ds, host, port)


@cli.group()
def ledger():
    """Inspect a ledger (give the ledger, or the run's output JSONL)."""


@ledger.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object with stable keys (see README).")
@click.option("--as-config", is_flag=True, help="Print the latest run's settings as a --config YAML file.")
@click.option("--recent-minutes", type=int, default=10, show_default=True, help="Window of the recent speed.")
@friendly_errors
def status(path, as_json, as_config, recent_minutes):
    """Progress, speed, ETA, run history and the last error of a run.

    Opens the ledger read-only: safe while a run is writing it.

    \b
    Example:
      prefgen ledger status pairs.jsonl.ledger.sqlite
      prefgen ledger status pairs.jsonl.ledger.sqlite --json | jq .units
    """
    import orjson

    from prefgen.ledger.inspect import config_yaml, format_status, status_data

    data = status_data(str(ledger_of(path)), recent_minutes)
    if as_config:
        click.echo(config_yaml(data), nl=False)
    elif as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_status(data))


@ledger.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("sample_index", type=int)
@click.option("--full", is_flag=True, help="Print raw answers whole.")
@friendly_errors
def show(path, sample_index, full):
    """Every unit of one sample: seed, status, SQL, answer, tokens, time.

    \b
    Example:
      prefgen ledger show pairs.jsonl.ledger.sqlite 17 --full
    """
    from prefgen.ledger.inspect import format_sample

    click.echo(format_sample(str(ledger_of(path)), sample_index, full))


@ledger.command()
@click.argument("path", type=click.Path(dir_okay=False))
@friendly_errors
def failures(path):
    """Units in error / oom / no_sql / retry states, grouped by reason, with their samples.

    \b
    Example:
      prefgen ledger failures pairs.jsonl.ledger.sqlite
    """
    from prefgen.ledger.inspect import format_failures

    click.echo(format_failures(str(ledger_of(path))))


@ledger.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--status",
    "statuses",
    default="error,oom",
    show_default=True,
    help="Comma-separated statuses to retry (error, oom).",
)
@friendly_errors
def retry(path, statuses):
    """Mark units to be generated again by the next `prefgen generate`.

    \b
    Example:
      prefgen ledger retry pairs.jsonl.ledger.sqlite --status oom
    """
    from prefgen.ledger.inspect import mark_retry

    count = mark_retry(str(ledger_of(path)), [s.strip() for s in statuses.split(",") if s.strip()])
    click.echo(f"Marked {count} units for retry: the next run generates them again.")
