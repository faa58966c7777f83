from prefgen.cli import cli

cli()
