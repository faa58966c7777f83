"""prefgen's command line: the `prefgen` group and its commands, one module per family.

  generate.py   generate
  invariance.py check-invariance
  files.py      export, verify, pair, merge, repair, tiny-model
  ledger.py     ledger status/show/failures/retry, browse
  options.py    parameter types and the option groups commands share (defaults from config)
  terminal.py   logging, `Error: ...` messages, exit codes

Heavy libraries (torch, transformers, sqlite-utils, Datasette) are imported inside the
commands that need them, so `prefgen --help` starts at once.
"""

from __future__ import annotations

import click

from prefgen import __version__
from prefgen.cli.files import export, merge, pair, repair, tiny_model, verify
from prefgen.cli.generate import generate
from prefgen.cli.invariance import check_invariance
from prefgen.cli.ledger import browse, ledger
from prefgen.cli.terminal import EXIT_INCOMPLETE, friendly_errors, setup_logging

__all__ = ["cli", "EXIT_INCOMPLETE", "friendly_errors"]


@click.group()
@click.version_option(__version__, prog_name="prefgen")
def cli():
    """prefgen: resumable DPO preference data for Text-to-SQL models."""
    setup_logging()


# In the order --help has always listed them (click sorts them by name anyway).
for command in (generate, tiny_model, repair, merge, export, verify, pair, browse, ledger, check_invariance):
    cli.add_command(command)
