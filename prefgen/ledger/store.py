"""The ledger: a SQLite database (through sqlite-utils) that records every work unit.

`Ledger` is the only code that reads or writes it. Opening one for writing applies any
outstanding migrations (migrations.py) and replaces views older than views.py's, so a new
ledger and an old one take the same path; opening one read-only never writes the file, nor
anything beside it (`read_connection`).
"""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import orjson
import sqlite_utils

from prefgen import __version__
from prefgen.errors import ConfigError, LedgerError
from prefgen.ledger import keys
from prefgen.ledger.migrations import MIGRATIONS_TABLE, applied_migrations, now, pending_migrations, upgrade
from prefgen.ledger.views import RECENT_MINUTES, create_temp_views, speed_sql, views_are_current
from prefgen.runtime.lock import Reader, exclusive, shared
from prefgen.units import RETRIED_STATUSES


def _wal_is_empty(path: Path) -> bool:
    """Whether the ledger's write-ahead log holds nothing (no -wal file, or an empty one): then
    the ledger file itself holds every commit."""
    try:
        return os.path.getsize(f"{path}-wal") == 0
    except OSError:
        return True


def read_connection(path: Path, check_same_thread: bool = True) -> tuple[sqlite3.Connection, Reader]:
    """A read-only connection that creates nothing beside the ledger, and what its lock told.

    SQLite's `mode=ro` on a WAL ledger creates the -wal and -shm files (and cannot when the
    storage is read-only), and leaves them behind. So: when no writer holds the ledger's lock
    and its -wal holds nothing, the file is complete and cannot change while the lock is held
    shared (a writer waits for it): it is opened `immutable=1`, which creates nothing and
    works on read-only storage. Otherwise a run is writing (the -wal and -shm are its own) or
    one died before its -wal was folded into the file: it is read through the WAL (`mode=ro`),
    the lock not held, so a writer is never kept waiting on it. The caller releases the Reader
    after closing the connection."""
    reader = shared(path)
    immutable = reader.writer is None and _wal_is_empty(path)
    if not immutable:
        reader.release()
    uri = f"file:{quote(str(path))}?" + ("immutable=1" if immutable else "mode=ro")
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=check_same_thread), reader
    except sqlite3.DatabaseError as exc:
        reader.release()
        if not immutable and not os.access(path.parent, os.W_OK):
            raise LedgerError(
                f"cannot read {path}: its -wal file holds commits not yet in the ledger file, and SQLite"
                f" needs to create {path.name}-shm beside it to read them, on read-only storage ({exc})",
                hint="copy the ledger with its -wal file to writable storage and read the copy",
            ) from exc
        raise LedgerError(f"{path} is not a prefgen ledger: {exc}") from exc


def _connect(path: Path, readonly: bool) -> tuple[sqlite_utils.Database, Reader | None]:
    if readonly and not path.exists():
        raise LedgerError(f"{path}: no such ledger")
    if readonly:
        conn, reader = read_connection(path)
        return sqlite_utils.Database(conn), reader
    try:
        conn = sqlite3.connect(str(path))
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path} is not a prefgen ledger: {exc}") from exc
    return sqlite_utils.Database(conn), None


def _samples_below(max_sample: int | None) -> tuple[str, list]:
    """A `where` condition (and its parameters) for samples below --max-samples, if set."""
    return ("sample_index < ?", [max_sample]) if max_sample is not None else ("1", [])


class Ledger:
    """One run's ledger. Opened read-write it migrates; read-only it never writes."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.db, self.reader = _connect(self.path, readonly)  # reader: what the ledger's lock told
        try:
            self.db.execute("PRAGMA busy_timeout = 10000")
            if readonly:
                self._check_readable()
            else:
                self.db.enable_wal()
                self.db.execute("PRAGMA synchronous = FULL")
                upgrade(self.db)
        except BaseException as exc:
            self.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise LedgerError(f"{self.path} is not a prefgen ledger: {exc}") from exc
            raise

    def _check_readable(self) -> None:
        """Refuse what is not a ledger, or one whose tables are older than this prefgen's; give
        a ledger whose views are older the current ones, as TEMP views of this connection."""
        if MIGRATIONS_TABLE not in self.db.table_names():
            raise LedgerError(f"{self.path} is not a prefgen ledger (no {MIGRATIONS_TABLE} table)")
        pending = pending_migrations(applied_migrations(self.db), reading=True)
        if pending:
            raise LedgerError(
                f"{self.path} was written by an older prefgen: its tables lack the migrations {', '.join(pending)}",
                hint="bring it up to date by opening it for writing once: run its `prefgen generate` command again"
                " (it resumes the run, or says that nothing is left to do)",
            )
        if not views_are_current(self.db.conn):
            create_temp_views(self.db.conn)

    def close(self) -> None:
        """Close the connection (and let go of the ledger's lock a reader held shared)."""
        self.db.close()
        if self.reader:
            self.reader.release()

    # --- meta ---------------------------------------------------------------------------------
    def meta(self, key: str, default: str | None = None) -> str | None:
        """The value of `key` in the meta table, or `default`."""
        rows = list(self.db.query("select value from meta where key = ?", [key]))
        return rows[0]["value"] if rows else default

    def set_meta(self, values: dict[str, object]) -> None:
        """Set meta keys (strings as they are, anything else as JSON)."""
        self.db["meta"].upsert_all(
            [{"key": k, "value": v if isinstance(v, str) else orjson.dumps(v).decode()} for k, v in values.items()],
            pk="key",
        )

    def update_meta(self, values: dict[str, object]) -> None:
        """Set meta keys in a transaction of their own."""
        with self.db.atomic():
            self.set_meta(values)

    def meta_json(self, key: str) -> dict | None:
        """A meta value stored as JSON (keys.FINGERPRINT, keys.GENERATION_IDENTITY), or None."""
        stored = self.meta(key)
        return orjson.loads(stored) if stored else None

    def fingerprint(self) -> dict | None:
        """The fingerprint the ledger's run was started with (None: none recorded yet)."""
        return self.meta_json(keys.FINGERPRINT)

    def has_runs(self) -> bool:
        """Whether any run was ever started on this ledger."""
        return bool(self.db["runs"].count)

    def holds_work(self) -> bool:
        """Whether any unit (or pair) was ever committed."""
        return bool(self.db["units"].count or self.db["pairs"].count)

    def hand_over(self, output: Path) -> None:
        """Before the ledger is moved (a raised cap): name `output` as its JSONL, and checkpoint
        and remove its -wal (journal mode DELETE), so nothing is left under the old name."""
        self.update_meta({keys.OUTPUT_PATH: str(output.resolve())})
        self.db.execute("PRAGMA journal_mode = DELETE")

    # --- runs and events ------------------------------------------------------------------------
    def start_run(self, settings: dict, argv: list[str]) -> int:
        """Open a row in `runs` for this process and return its id."""
        with self.db.atomic():
            self.db.execute(
                "update runs set status = 'crashed', stop_reason = 'the process died' where status = 'running'"
            )
            table = self.db["runs"].insert(
                {
                    "started_at": now(),
                    "status": "running",
                    "units_done": 0,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "argv": orjson.dumps(argv).decode(),
                    "prefgen_version": __version__,
                    "settings": orjson.dumps(settings).decode(),
                }
            )
        return table.last_pk

    def end_run(self, run_id: int, status: str, reason: str = "", error: str = "") -> None:
        """Close this process's row in `runs` with its status and why it stopped."""
        with self.db.atomic():
            self.db["runs"].update(run_id, {"ended_at": now(), "status": status, "stop_reason": reason, "error": error})

    def record_event(self, run_id: int, kind: str, detail: dict) -> None:
        """Add a row to `events`, its detail as JSON."""
        with self.db.atomic():
            self._insert_event(run_id, kind, detail)

    def _insert_event(self, run_id: int | None, kind: str, detail: dict) -> None:
        self.db["events"].insert({"run_id": run_id, "at": now(), "kind": kind, "detail": orjson.dumps(detail).decode()})

    def runs(self) -> list[dict]:
        """Every row of `runs`, oldest first."""
        return list(self.db.query("select * from runs order by id"))

    # --- units --------------------------------------------------------------------------------
    def units_between(self, first: int, last: int) -> dict[tuple[int, int], dict]:
        """(sample, reject) -> {status, record_hash, sql, role} for the samples first..last."""
        rows = self.db.query(
            "select sample_index, reject_index, status, record_hash, sql, role from units"
            " where sample_index between ? and ?",
            [first, last],
        )
        return {(r["sample_index"], r["reject_index"]): r for r in rows}

    def commit_units(
        self,
        run_id: int,
        rows: list[dict],
        output_state: dict,
        pairs: list[dict] = (),
        samples: list[dict] = (),
        records: list[dict] = (),
        checked: list[dict] = (),
    ) -> None:
        """Record a batch of units (with their samples' `records`; with --pairs onpolicy, the
        pairs and samples it completes; the gold checks of the samples it completes) and the
        output's new committed length in one transaction."""
        stamp = now()
        try:
            with self.db.atomic():
                self.db["samples"].insert_all(records, pk="sample_index", ignore=True)
                self.db.conn.executemany(
                    "update samples set gold_suspect = :gold_suspect, suspect_detail = :suspect_detail"
                    " where sample_index = :sample_index",
                    checked,
                )
                self.db["units"].upsert_all(
                    [{**row, "run_id": run_id, "updated_at": stamp} for row in rows],
                    pk=("sample_index", "reject_index"),
                )
                if samples:
                    self.db["pairs"].upsert_all(
                        [{**row, "run_id": run_id, "updated_at": stamp} for row in pairs],
                        pk=("sample_index", "pair_index"),
                    )
                    self.db["paired_samples"].upsert_all(
                        [{**row, "run_id": run_id, "updated_at": stamp} for row in samples], pk="sample_index"
                    )
                self.set_meta(output_state)
                self.db.execute("update runs set units_done = units_done + ? where id = ?", [len(rows), run_id])
        except sqlite3.OperationalError as exc:
            raise LedgerError(
                f"cannot write the ledger {self.path}: {exc}",
                hint="free disk space or fix the disk, then run the same command again: nothing committed is lost",
            ) from exc

    def status_counts(self, max_sample: int | None = None) -> dict[str, int]:
        """Status -> units, over the samples below --max-samples if given."""
        below, params = _samples_below(max_sample)
        rows = self.db.query(f"select status, count(*) as n from units where {below} group by status", params)
        return {r["status"]: r["n"] for r in rows}

    def further_attempts(self, num_rejects: int, max_sample: int | None = None) -> int:
        """Units beyond the first num_rejects of their sample (--max-attempts)."""
        below, params = _samples_below(max_sample)
        sql = f"select count(*) as n from units where reject_index >= ? and {below}"
        return next(self.db.query(sql, [num_rejects, *params]))["n"]

    def written_lines(self, order: str = "file") -> Iterator[dict]:
        """Every line prefgen wrote (a written unit's, or an on-policy pair's as reject_index
        pair_index), with its offset, in file order or (sample, reject or pair) order."""
        by = "line_offset" if order == "file" else "sample_index, reject_index"
        yield from self.db.query(
            "select * from (select sample_index, reject_index, line_offset, line_length, line from units"
            " where status = 'written' union all"
            " select sample_index, pair_index, line_offset, line_length, line from pairs)"
            f" order by {by}"
        )

    def mark_for_retry(self, statuses: list[str]) -> int:
        """Mark units in these statuses to be generated again by the next run, with an event."""
        marks = ",".join("?" for _ in statuses)
        with self.db.atomic():
            cursor = self.db.execute(
                f"update units set status = 'retry', detail = 'marked for retry from ' || status, updated_at = ?"
                f" where status in ({marks})",
                [now(), *statuses],
            )
            count = cursor.rowcount
            self._insert_event(None, "retry_marked", {"statuses": statuses, "units": count})
        return count

    # --- inspection (read-only) ---------------------------------------------------------------------
    def progress(self) -> dict:
        """The `progress` view's row."""
        return next(self.db.query("select * from progress"))

    def run_history(self) -> list[dict]:
        """The `run_history` view: one row per run."""
        return list(self.db.query("select * from run_history"))

    def sample_units(self, sample_index: int) -> list[dict]:
        """Every unit of one sample, in attempt order."""
        return list(self.db.query("select * from units where sample_index = ? order by reject_index", [sample_index]))

    def partial_samples(self) -> int:
        """Samples with some units done that are not complete."""
        return next(
            self.db.query("select count(*) as n from sample_progress where units - failed >= 1 and not complete")
        )["n"]

    def verdict_counts(self) -> dict[str, int]:
        """Execution verdicts (--db-root) -> units, split by kept (written) and dropped, or for
        on-policy candidates by role."""
        rows = self.db.query(
            "select verdict, case status when 'written' then 'kept' when 'candidate' then role else status end"
            " as what, count(*) as n from units where verdict is not null group by verdict, what"
        )
        return {f"{r['verdict']} ({r['what']})": r["n"] for r in rows}

    def totals(self) -> dict:
        """Units and tokens generated, and the time span they cover."""
        return next(
            self.db.query(
                "select count(*) as units, coalesce(sum(new_tokens), 0) as new_tokens,"
                " coalesce(sum(prompt_tokens), 0) as prompt_tokens, min(updated_at) as first, max(updated_at) as last"
                " from units"
            )
        )

    def generation_seconds(self) -> float:
        """Time spent inside generation calls, summed over units."""
        return next(self.db.query("select coalesce(sum(gen_seconds), 0) as s from units"))["s"]

    def failures(self) -> list[dict]:
        """The `failures` view: failed units grouped by reason."""
        return list(self.db.query("select * from failures"))

    def speed(self, minutes: int = RECENT_MINUTES) -> dict:
        """The `speed` view's row, for a recent window of `minutes`."""
        return next(self.db.query(speed_sql(minutes)))


def mark_retry(path: str, statuses: list[str]) -> int:
    """Mark units to be generated again by the next run (refused while a run holds the ledger)."""
    allowed = set(RETRIED_STATUSES) - {"retry"}
    wrong = [s for s in statuses if s not in allowed]
    if wrong:
        raise ConfigError(
            f"cannot retry units in status {', '.join(wrong)}",
            hint=f"only {', '.join(sorted(allowed))} units can be retried: the others would come out the same",
        )
    if not Path(path).is_file():
        raise LedgerError(f"{path}: no such ledger")
    with exclusive(path):
        ledger = Ledger(path)
        try:
            return ledger.mark_for_retry(statuses)
        finally:
            ledger.close()
