"""`prefgen browse`: look at a run and its pairs in the browser, with Datasette.

The ledger is served read-only (SQLite `mode=ro`, and a database object that refuses to open
a writing connection; a ledger whose views are older than this prefgen's is shown the current
ones as TEMP views), so browsing never writes, blocks or slows a run writing it (WAL: readers and
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
    """A Datasette serving one ledger, as the database `ledger`, read-only (and nothing else:
    not Datasette's empty `_memory` database)."""
    Datasette, Database = import_datasette()
    from prefgen.ledger.views import create_temp_views, views_are_current

    class ReadOnlyDatabase(Database):
        def connect(self, write=False):
            if write:
                raise LedgerError("prefgen browse is read-only")
            conn = super().connect(write=False)
            if not views_are_current(conn):
                create_temp_views(conn)  # a ledger with older views: the current ones, on this connection only
            return conn

        async def view_names(self):
            """The ledger's views and those this connection was given (TEMP)."""
            sql = "select name from sqlite_master where type = 'view' union select name from temp.sqlite_master"
            return [row[0] for row in (await self.execute(sql)).rows]

        async def get_view_definition(self, view):
            sql = "select sql from temp.sqlite_master where type = 'view' and name = ?"
            rows = (await self.execute(sql, [view])).rows
            return rows[0][0] + ";" if rows else await super().get_view_definition(view)

    path = Path(ledger)
    if not path.is_file():
        raise LedgerError(f"{path}: no such ledger")
    ds = Datasette(metadata=configuration(), settings=SETTINGS)
    ds.remove_database("_memory")  # Datasette adds it when it is given no file; it would sit empty beside the ledger
    ds.add_database(ReadOnlyDatabase(ds, path=str(path), is_mutable=True), name="ledger")
    return ds


def prepare(ledger: str | Path):
    """The Datasette for `ledger`, started; refuses what is not a prefgen ledger, or one too old
    to read without writing it, before anything is served."""
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
