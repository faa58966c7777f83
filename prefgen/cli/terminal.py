"""What prefgen says on the terminal: its own messages on stderr, `Error: ...` for its
exceptions, and its exit codes. The only place where exceptions become messages."""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading

import click

from prefgen.errors import Interrupted, PrefgenError, disk_full

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
        except Exception as exc:
            if not disk_full(exc):
                raise
            raise click.ClickException(
                f"the disk is full: {exc}\nHint: free disk space, then run the same command again:"
                " nothing committed is lost"
            ) from exc

    return wrapper
