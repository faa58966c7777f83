"""The commands that read a run's ledger: `prefgen ledger ...` and `prefgen browse`. Each takes
the ledger, or the run's output (for a `.json` output, the array or its journal)."""

from __future__ import annotations

import click

from prefgen.cli.terminal import friendly_errors
from prefgen.ledger.views import RECENT_MINUTES
from prefgen.paths import ledger_of


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (localhost only by default)."
)
@click.option("--port", type=int, default=8001, show_default=True)
@friendly_errors
def browse(path, host, port):
    """Look at a run in the browser (Datasette, read-only): dashboard, pairs, samples, failures.

    PATH is the run's output (JSON Lines, or a .json output or its journal) or its ledger.
    Safe beside a run that is writing.

    \b
    Example:
      prefgen browse runs/demo.jsonl            # then open http://127.0.0.1:8001/-/dashboards/run
      ssh -L 8001:localhost:8001 gpu-box        # from your laptop, for a run on a remote machine
    """
    from prefgen.ledger.browse import listen, prepare, serve

    ledger = ledger_of(path)
    ds = prepare(ledger)
    sock = listen(host, port)  # a port in use is an error before anything says "Serving"
    click.echo(f"Serving {ledger} read-only at http://{host}:{port}/-/dashboards/run (Ctrl-C to stop)")
    serve(ds, sock)


@click.group()
def ledger():
    """Inspect a ledger (give the ledger, or the run's output JSONL).

    For a .json output, give the .json or its journal (NAME.journal.jsonl).
    """


@ledger.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object with stable keys (see docs/ledger.md).")
@click.option("--as-config", is_flag=True, help="Print the latest run's settings as a --config YAML file.")
@click.option(
    "--recent-minutes", type=int, default=RECENT_MINUTES, show_default=True, help="Window of the recent speed."
)
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
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per sample.")
@friendly_errors
def suspects(path, as_json):
    """The golds worth a second look: samples whose gold fails, or whose answers mostly agree
    on another result (needs --db-root; see docs/generate-and-judging.md).

    \b
    Example:
      prefgen ledger suspects pairs.jsonl
      prefgen ledger suspects pairs.jsonl --json | jq -r '.[].gold'
    """
    import orjson

    from prefgen.ledger.inspect import format_suspects, suspects_data

    rows = suspects_data(str(ledger_of(path)))
    click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() if as_json else format_suspects(rows))


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
    from prefgen.ledger.store import mark_retry

    count = mark_retry(str(ledger_of(path)), [s.strip() for s in statuses.split(",") if s.strip()])
    click.echo(f"Marked {count} units for retry: the next run generates them again.")
