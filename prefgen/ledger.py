"""The ledger: a SQLite database (through sqlite-utils) that records every work unit.

`Ledger` is the only code that reads or writes it. Opening one applies any outstanding
migrations, so a new ledger and an old one take the same path. Migrations are named,
append-only steps recorded in the `_prefgen_migrations` table.
"""

from __future__ import annotations

import datetime
import os
import socket
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

import orjson
import sqlite_utils

from prefgen import __version__
from prefgen.errors import LedgerError, SettingsMismatch

MIGRATIONS_TABLE = "_prefgen_migrations"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def m001_initial(db: sqlite_utils.Database) -> None:
    """Units, runs, events and the key-value meta table."""
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["runs"].create(
        {
            "id": int, "started_at": str, "ended_at": str, "status": str, "stop_reason": str,
            "units_done": int, "error": str, "pid": int, "host": str, "argv": str,
            "prefgen_version": str, "settings": str,
        },
        pk="id",
    )
    db["units"].create(
        {
            "sample_index": int, "reject_index": int, "seed": int, "status": str, "detail": str,
            "record_hash": str, "raw_answer": str, "sql": str, "prompt_tokens": int,
            "new_tokens": int, "gen_seconds": float, "run_id": int, "updated_at": str,
            "line_offset": int, "line_length": int, "line": str,
        },
        pk=("sample_index", "reject_index"),
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["units"].create_index(["seed"], unique=True)
    db["units"].create_index(["status"])
    db["events"].create(
        {"id": int, "run_id": int, "at": str, "kind": str, "detail": str},
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [m001_initial]


def migrate(db: sqlite_utils.Database) -> None:
    """Apply the migrations this ledger has not had yet; refuse ledgers from a newer prefgen."""
    db[MIGRATIONS_TABLE].create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
    applied = {row["name"] for row in db[MIGRATIONS_TABLE].rows}
    check_known(applied)
    for migration in MIGRATIONS:
        if migration.__name__ not in applied:
            with db.atomic():
                migration(db)
                db[MIGRATIONS_TABLE].insert({"name": migration.__name__, "applied_at": now()})


def check_known(applied: set[str]) -> None:
    unknown = applied - {m.__name__ for m in MIGRATIONS}
    if unknown:
        raise LedgerError(
            f"this ledger was written by a newer prefgen (it has migrations {', '.join(sorted(unknown))})",
            hint="upgrade prefgen to read it",
        )


def _connect(path: Path, readonly: bool) -> sqlite_utils.Database:
    if readonly:
        if not path.exists():
            raise LedgerError(f"{path}: no such ledger")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    else:
        conn = sqlite3.connect(str(path))
    return sqlite_utils.Database(conn)


class Ledger:
    """One run's ledger. Opened read-write it migrates; read-only it only checks."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        try:
            self.db = _connect(self.path, readonly)
            self.db.execute("PRAGMA busy_timeout = 10000")
            if readonly:
                self._check_readable()
            else:
                self.db.enable_wal()
                self.db.execute("PRAGMA synchronous = FULL")
                migrate(self.db)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a prefgen ledger: {exc}") from exc

    def _check_readable(self) -> None:
        if MIGRATIONS_TABLE not in self.db.table_names():
            raise LedgerError(f"{self.path} is not a prefgen ledger (no {MIGRATIONS_TABLE} table)")
        check_known({row["name"] for row in self.db[MIGRATIONS_TABLE].rows})

    def close(self) -> None:
        self.db.close()

    # --- meta ---------------------------------------------------------------------------------
    def meta(self, key: str, default: str | None = None) -> str | None:
        rows = list(self.db.query("select value from meta where key = ?", [key]))
        return rows[0]["value"] if rows else default

    def set_meta(self, values: dict[str, object]) -> None:
        self.db["meta"].upsert_all(
            [{"key": k, "value": v if isinstance(v, str) else orjson.dumps(v).decode()} for k, v in values.items()],
            pk="key",
        )

    def check_fingerprint(self, fingerprint: dict) -> None:
        """Record the fingerprint on first use; afterwards refuse a run whose settings differ."""
        stored = self.meta("fingerprint")
        if stored is None:
            with self.db.atomic():
                self.set_meta({"fingerprint": fingerprint})
            return
        stored = orjson.loads(stored)
        differing = [
            f"{key} (ledger: {stored.get(key)!r}, now: {fingerprint.get(key)!r})"
            for key in sorted(set(stored) | set(fingerprint))
            if stored.get(key) != fingerprint.get(key)
        ]
        if differing:
            raise SettingsMismatch(
                f"{self.path} was started with other settings: " + "; ".join(differing),
                hint="run with the ledger's settings, or pass a new --output (or --ledger) to start a separate run",
            )

    # --- runs and events ------------------------------------------------------------------------
    def start_run(self, settings: dict, argv: list[str]) -> int:
        """Open a row in `runs` for this process and return its id."""
        with self.db.atomic():
            self.db.execute(
                "update runs set status = 'crashed', stop_reason = 'the process died without closing its run'"
                " where status = 'running'"
            )
            table = self.db["runs"].insert(
                {
                    "started_at": now(), "status": "running", "units_done": 0, "pid": os.getpid(),
                    "host": socket.gethostname(), "argv": orjson.dumps(argv).decode(),
                    "prefgen_version": __version__, "settings": orjson.dumps(settings).decode(),
                }
            )
        return table.last_pk

    def end_run(self, run_id: int, status: str, reason: str = "", error: str = "") -> None:
        with self.db.atomic():
            self.db["runs"].update(run_id, {"ended_at": now(), "status": status, "stop_reason": reason, "error": error})

    def record_event(self, run_id: int, kind: str, detail: dict) -> None:
        with self.db.atomic():
            self.db["events"].insert({"run_id": run_id, "at": now(), "kind": kind, "detail": orjson.dumps(detail).decode()})

    def runs(self) -> list[dict]:
        return list(self.db.query("select * from runs order by id"))

    # --- units --------------------------------------------------------------------------------
    def units_between(self, first: int, last: int) -> dict[tuple[int, int], dict]:
        """(sample, reject) -> {status, record_hash, sql} for the samples first..last."""
        rows = self.db.query(
            "select sample_index, reject_index, status, record_hash, sql from units"
            " where sample_index between ? and ?",
            [first, last],
        )
        return {(r["sample_index"], r["reject_index"]): r for r in rows}

    def kept_sql(self, sample_index: int) -> set[str]:
        """The SQL of the rejects already written for one sample."""
        rows = self.db.query("select sql from units where sample_index = ? and status = 'written'", [sample_index])
        return {r["sql"] for r in rows}

    def commit_units(self, run_id: int, rows: list[dict], output_state: dict) -> None:
        """Record a batch of units and the output's new committed length in one transaction."""
        stamp = now()
        try:
            with self.db.atomic():
                self.db["units"].upsert_all(
                    [{**row, "run_id": run_id, "updated_at": stamp} for row in rows],
                    pk=("sample_index", "reject_index"),
                )
                self.set_meta(output_state)
                self.db.execute("update runs set units_done = units_done + ? where id = ?", [len(rows), run_id])
        except sqlite3.OperationalError as exc:
            raise LedgerError(
                f"cannot write the ledger {self.path}: {exc}",
                hint="free disk space or fix the disk, then run the same command again: nothing committed is lost",
            ) from exc

    def status_counts(self, max_sample: int | None = None) -> dict[str, int]:
        where, params = ("where sample_index < ?", [max_sample]) if max_sample is not None else ("", [])
        rows = self.db.query(f"select status, count(*) as n from units {where} group by status", params)
        return {r["status"]: r["n"] for r in rows}

    def written_lines(self) -> Iterator[dict]:
        """Every written unit's line and offset, in file order."""
        yield from self.db.query(
            "select sample_index, reject_index, line_offset, line_length, line from units"
            " where status = 'written' order by line_offset"
        )

    def mark_for_retry(self, statuses: list[str]) -> int:
        """Mark units in these statuses to be generated again by the next run."""
        marks = ",".join("?" for _ in statuses)
        with self.db.atomic():
            cursor = self.db.execute(
                f"update units set status = 'retry', updated_at = ? where status in ({marks})", [now(), *statuses]
            )
        return cursor.rowcount
