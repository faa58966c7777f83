"""Run SQL that a model wrote against a Spider/BIRD SQLite database, safely.

The database is opened read-only; an authorizer refuses every write, ATTACH, PRAGMA and
extension loading; a progress handler stops a query past its time limit; at most `max_rows`
rows are fetched. The database file is never modified, whatever the query.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from prefgen.config import DEFAULT_MAX_ROWS, DEFAULT_TIME_LIMIT

_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
_FORBIDDEN_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
PROGRESS_STEPS = 10_000  # SQLite VM instructions between two looks at the clock


@dataclass(frozen=True)
class Outcome:
    """What running one query gave."""

    rows: tuple | None  # the rows fetched, None when the query failed
    columns: int = 0
    error: str = ""
    timeout: bool = False
    truncated: bool = False  # more than max_rows rows: only max_rows were kept

    @property
    def ok(self) -> bool:
        return self.rows is not None


def database_path(db_root: str | Path, db_id: str) -> Path:
    """Spider/BIRD layout: DIR/<db_id>/<db_id>.sqlite."""
    return Path(db_root) / db_id / f"{db_id}.sqlite"


def _authorize(action, arg1, arg2, db_name, trigger):
    if action in _ALLOWED and not (action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _FORBIDDEN_FUNCTIONS):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def connect(path: Path) -> sqlite3.Connection:
    """A read-only connection that only reads."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.set_authorizer(_authorize)
    return conn


def run_query(
    conn: sqlite3.Connection, sql: str, time_limit: float = DEFAULT_TIME_LIMIT, max_rows: int = DEFAULT_MAX_ROWS
) -> Outcome:
    """Run one statement with a time limit and a row cap."""
    deadline = time.monotonic() + time_limit
    expired = []

    def progress() -> int:
        if time.monotonic() > deadline:
            expired.append(True)
            return 1
        return 0

    conn.set_progress_handler(progress, PROGRESS_STEPS)
    try:
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(max_rows + 1)
        columns = len(cursor.description or ())
    except sqlite3.Warning as exc:  # several statements at once
        return Outcome(None, error=str(exc))
    except sqlite3.Error as exc:
        if expired:
            return Outcome(None, error=f"timed out after {time_limit:g}s", timeout=True)
        return Outcome(None, error=str(exc))
    finally:
        conn.set_progress_handler(None, 0)
    return Outcome(tuple(rows[:max_rows]), columns, truncated=len(rows) > max_rows)


def explain(conn: sqlite3.Connection, sql: str) -> tuple | None:
    """The query's SQLite bytecode (without running it), or None when it does not compile."""
    try:
        return tuple(tuple(row[1:]) for row in conn.execute("EXPLAIN " + sql))
    except (sqlite3.Error, sqlite3.Warning):
        return None
