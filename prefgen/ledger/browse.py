"""`prefgen browse`: look at a run and its pairs in the browser, with Datasette.

The ledger is served read-only: every query gets its own read connection, opened as
`prefgen ledger` commands open theirs (store.read_connection: `immutable=1` when no run writes
the ledger, so nothing is created beside it and read-only storage works; through the WAL while
a run writes it) and closed after it; the database object refuses to open a writing connection;
a ledger whose views are older than this prefgen's is shown the current ones as TEMP views. So
browsing never writes, never leaves -wal/-shm files behind, and never blocks or slows a run
writing it. Each connection has the SQL function `prefgen_alive(pid, host)`: whether the process
of a `runs` row holds the ledger's lock (the dashboard shows a dead `running` run as crashed).
prefgen's Datasette configuration (datasette.yml, shipped in the package) adds canned queries
and a dashboard (datasette-dashboards, Vega-Lite charts); both read only the ledger's
documented views (and prefgen_alive). Datasette is the `browse` extra. A request that fails is
one line on the terminal, not Datasette's traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from importlib import resources
from pathlib import Path

from prefgen.errors import ConfigError, LedgerError

log = logging.getLogger("prefgen.browse")

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


def one_line_errors():
    """A Datasette plugin (a module, as Datasette wants them): a request that fails (a mistyped
    URL, an unknown column) is one line on the terminal, `GET /path: 404 Table not found`; the
    page says the rest. Datasette's own handler still renders the error page."""
    import types

    from datasette import hookimpl

    @hookimpl(tryfirst=True)
    def handle_exception(datasette, request, exception):
        status = getattr(exception, "status", 500)
        message = exception.args[0] if getattr(exception, "args", None) else exception
        query = f"?{request.query_string}" if request.query_string else ""
        log.info("%s %s%s: %s %s", request.method, request.path, query, status, message)

    plugin = types.ModuleType("prefgen_browse_errors")
    plugin.handle_exception = handle_exception
    return plugin


def quiet_datasette_errors() -> None:
    """Register one_line_errors once; stop Datasette's default handler printing tracebacks."""
    import datasette.handle_exception as default
    from datasette.plugins import pm

    class NoTraceback:
        @staticmethod
        def print_exc(*args, **kwargs):
            pass

    default.rich = None  # it prints every error's traceback, locals and all, when rich is installed
    default.traceback = NoTraceback  # and a 500's with traceback.print_exc
    if pm.get_plugin("prefgen_browse_errors") is None:
        pm.register(one_line_errors(), name="prefgen_browse_errors")


def configuration() -> dict:
    """prefgen's Datasette metadata: titles, facets, canned queries, the dashboard."""
    import yaml

    return yaml.safe_load(resources.files("prefgen.ledger").joinpath("datasette.yml").read_text(encoding="utf-8"))


def make_datasette(ledger: str | Path):
    """A Datasette serving one ledger, as the database `ledger`, read-only (and nothing else:
    not Datasette's empty `_memory` database)."""
    Datasette, Database = import_datasette()
    from prefgen.ledger.store import read_connection
    from prefgen.ledger.views import create_temp_views, views_are_current

    class ReadOnlyDatabase(Database):
        def connect(self, write=False):
            if write:
                raise LedgerError("prefgen browse is read-only")
            conn, reader = read_connection(Path(self.path), check_same_thread=False)
            reader.release()  # not used by Datasette (execute_fn opens its own); kept read-only
            return conn

        def _reading(self, fn):
            """Run fn on a read connection of its own, closed (and the lock let go) after it."""
            conn, reader = read_connection(Path(self.path), check_same_thread=False)
            try:
                self.ds._prepare_connection(conn, self.name)
                conn.create_function("prefgen_alive", 2, lambda pid, host: int(reader.holds(pid, host)))
                if not views_are_current(conn):
                    create_temp_views(conn)  # a ledger with older views: the current ones, on this connection only
                return fn(conn)
            finally:
                conn.close()
                reader.release()

        async def execute_fn(self, fn):
            if self.ds.executor is None:
                return self._reading(fn)
            return await asyncio.get_running_loop().run_in_executor(self.ds.executor, self._reading, fn)

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
    quiet_datasette_errors()
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


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, or a ConfigError saying why not (the port in use)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}: {exc.strerror}", hint="pass an address with --host") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port left in TIME_WAIT is free
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} is in use", hint=f"pass another with --port, e.g. --port {port + 1}"
            ) from exc
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", hint="check --host and --port") from exc
    sock.set_inheritable(True)
    return sock


class OneLine(logging.Formatter):
    """A failed request as one line (the page shows the error), not uvicorn's traceback."""

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        return f"{message}: {type(exc).__name__}: {exc}" if exc else message

    def formatException(self, exc_info) -> str:  # noqa: N802 (logging's name)
        return ""


LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"one_line": {"()": OneLine}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "one_line", "stream": "ext://sys.stderr"}},
    "loggers": {
        name: {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "datasette")
    },
}


def serve(ds, sock: socket.socket) -> None:
    """Serve on the listening socket `sock` until interrupted."""
    import uvicorn

    config = uvicorn.Config(ds.app(), log_level="warning", log_config=LOG_CONFIG)
    uvicorn.Server(config).run(sockets=[sock])
