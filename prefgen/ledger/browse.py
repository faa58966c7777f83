"""`prefgen browse`: look at a run and its pairs in the browser, with Datasette.

The ledger is served read-only (SQLite `mode=ro`, and a database object that refuses to open
a writing connection), so browsing never blocks or slows a run writing it (WAL: readers and
the writer do not wait for each other). prefgen's Datasette configuration (datasette.yml,
shipped in the package) adds canned queries and a dashboard (datasette-dashboards, Vega-Lite
charts); both read only the ledger's documented views. Datasette is the `browse` extra.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from prefgen.errors import ConfigError, LedgerError

INSTALL_HINT = "install it with `pip install 'prefgen[browse]'` (make installs it into .venv)"
SETTINGS = {
    "truncate_cells_html": 0,  # long SQL and answers are read whole
    "sql_time_limit_ms": 5000,
    "default_page_size": 50,
    "allow_download": False,
    "allow_csv_stream": True,
}


def import_datasette():
    try:
        import datasette_dashboards  # noqa: F401  (the charts)
        from datasette.app import Datasette
        from datasette.database import Database
    except ImportError as exc:
        raise ConfigError(
            f"prefgen browse needs Datasette and datasette-dashboards ({exc})", hint=INSTALL_HINT
        ) from exc
    return Datasette, Database


def configuration() -> dict:
    """prefgen's Datasette metadata: titles, facets, canned queries, the dashboard."""
    import yaml

    return yaml.safe_load(resources.files("prefgen.ledger").joinpath("datasette.yml").read_text(encoding="utf-8"))


def make_datasette(ledger: str | Path):
    """A Datasette serving one ledger, as the database `ledger`, read-only."""
    Datasette, Database = import_datasette()

    class ReadOnlyDatabase(Database):
        def connect(self, write=False):
            if write:
                raise LedgerError("prefgen browse is read-only")
            return super().connect(write=False)

    path = Path(ledger)
    if not path.is_file():
        raise LedgerError(f"{path}: no such ledger")
    ds = Datasette(metadata=configuration(), settings=SETTINGS)
    ds.add_database(ReadOnlyDatabase(ds, path=str(path), is_mutable=True), name="ledger")
    return ds


def prepare(ledger: str | Path):
    """The Datasette for `ledger`, started; refuses what is not a prefgen ledger (and brings an
    older ledger's views up to date) before anything is served."""
    import asyncio

    from prefgen.ledger.store import Ledger

    Ledger(ledger, readonly=True).close()
    ds = make_datasette(ledger)
    asyncio.run(ds.invoke_startup())
    return ds


def serve(ds, host: str, port: int) -> None:
    """Serve until interrupted."""
    import uvicorn

    uvicorn.run(ds.app(), host=host, port=port, log_level="warning")
