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
            "id": int,
            "started_at": str,
            "ended_at": str,
            "status": str,
            "stop_reason": str,
            "units_done": int,
            "error": str,
            "pid": int,
            "host": str,
            "argv": str,
            "prefgen_version": str,
            "settings": str,
        },
        pk="id",
    )
    db["units"].create(
        {
            "sample_index": int,
            "reject_index": int,
            "seed": int,
            "status": str,
            "detail": str,
            "record_hash": str,
            "raw_answer": str,
            "sql": str,
            "prompt_tokens": int,
            "new_tokens": int,
            "gen_seconds": float,
            "run_id": int,
            "updated_at": str,
            "line_offset": int,
            "line_length": int,
            "line": str,
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


def m002_views(db: sqlite_utils.Database) -> None:
    """Read-only views that make the common questions one-line queries."""
    db.create_view(
        "sample_progress",
        """
        select sample_index,
          count(*) as units,
          sum(status = 'written') as written,
          sum(status = 'duplicate') as duplicate,
          sum(status = 'no_sql') as no_sql,
          sum(status in ('oom', 'error', 'retry')) as failed,
          sum(coalesce(new_tokens, 0)) as new_tokens,
          round(sum(coalesce(gen_seconds, 0)), 3) as gen_seconds
        from units group by sample_index""",
    )
    db.create_view(
        "progress",
        """
        select
          (select cast(value as integer) from meta where key = 'samples_total')
            * (select cast(value as integer) from meta where key = 'num_rejects') as units_total,
          (select count(*) from units where status not in ('oom', 'error', 'retry')) as units_done,
          (select count(*) from units where status in ('oom', 'error', 'retry')) as units_failed,
          (select cast(value as integer) from meta where key = 'samples_total') as samples_total,
          (select count(*) from sample_progress where units - failed
             = (select cast(value as integer) from meta where key = 'num_rejects')) as samples_complete,
          (select count(*) from units where status = 'written') as lines_written,
          (select coalesce(sum(new_tokens), 0) from units) as tokens_generated,
          (select max(updated_at) from units) as last_update""",
    )
    db.create_view(
        "run_history",
        """
        select r.id, r.started_at, r.ended_at, r.status, r.stop_reason, r.units_done, r.error,
          (select count(*) from events e where e.run_id = r.id and e.kind = 'oom_backoff') as oom_backoffs,
          round((julianday(coalesce(r.ended_at,
            (select max(updated_at) from units u where u.run_id = r.id), r.started_at))
            - julianday(r.started_at)) * 86400, 3) as seconds
        from runs r order by r.id""",
    )


def m003_same_as_gold(db: sqlite_utils.Database) -> None:
    """sample_progress counts the rejects that were the gold query again."""
    db["sample_progress"].drop()
    db.create_view(
        "sample_progress",
        """
        select sample_index,
          count(*) as units,
          sum(status = 'written') as written,
          sum(status = 'same_as_gold') as same_as_gold,
          sum(status = 'duplicate') as duplicate,
          sum(status = 'no_sql') as no_sql,
          sum(status in ('oom', 'error', 'retry')) as failed,
          sum(coalesce(new_tokens, 0)) as new_tokens,
          round(sum(coalesce(gen_seconds, 0)), 3) as gen_seconds
        from units group by sample_index""",
    )


def m004_verdicts(db: sqlite_utils.Database) -> None:
    """Execution verdicts per unit (--db-root), the `dropped` status, and --max-attempts:
    a sample is complete once it has num_rejects written rejects or has used its attempts."""
    for column, kind in (("verdict", str), ("verdict_detail", str), ("multiset_differs", int), ("order_differs", int)):
        db["units"].add_column(column, kind)
    db["units"].create_index(["verdict"])
    for view in ("progress", "sample_progress"):
        db[view].drop()
    db.create_view(
        "sample_progress",
        """
        with m as (
          select n, coalesce((select cast(value as integer) from meta where key = 'max_attempts'), n) as k
          from (select (select cast(value as integer) from meta where key = 'num_rejects') as n))
        select s.*, (s.failed = 0 and s.units >= m.n and (s.written >= m.n or s.units >= m.k)) as complete
        from (
          select sample_index,
            count(*) as units,
            sum(status = 'written') as written,
            sum(status = 'same_as_gold') as same_as_gold,
            sum(status = 'duplicate') as duplicate,
            sum(status = 'no_sql') as no_sql,
            sum(status = 'dropped') as dropped,
            sum(status in ('oom', 'error', 'retry')) as failed,
            sum(coalesce(new_tokens, 0)) as new_tokens,
            round(sum(coalesce(gen_seconds, 0)), 3) as gen_seconds
          from units group by sample_index) s, m""",
    )
    db.create_view(
        "progress",
        """
        with m as (
          select (select cast(value as integer) from meta where key = 'samples_total') as samples,
            (select cast(value as integer) from meta where key = 'num_rejects') as n)
        select
          m.samples * m.n + (select count(*) from units where reject_index >= m.n) as units_total,
          (select count(*) from units where status not in ('oom', 'error', 'retry')) as units_done,
          (select count(*) from units where status in ('oom', 'error', 'retry')) as units_failed,
          m.samples as samples_total,
          (select coalesce(sum(complete), 0) from sample_progress) as samples_complete,
          (select count(*) from units where status = 'written') as lines_written,
          (select coalesce(sum(new_tokens), 0) from units) as tokens_generated,
          (select max(updated_at) from units) as last_update
        from m""",
    )


def m005_onpolicy_pairs(db: sqlite_utils.Database) -> None:
    """--pairs onpolicy: each candidate's role, the pairs formed (their lines, like written
    units'), and one row per sample whose pairs are formed; such a sample is complete."""
    db["units"].add_column("role", str)
    db["pairs"].create(
        {
            "sample_index": int,
            "pair_index": int,
            "chosen_source": str,
            "chosen_attempt": int,
            "rejected_attempt": int,
            "run_id": int,
            "updated_at": str,
            "line_offset": int,
            "line_length": int,
            "line": str,
        },
        pk=("sample_index", "pair_index"),
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["paired_samples"].create(
        {
            "sample_index": int,
            "candidates": int,
            "chosen_candidates": int,
            "rejected_candidates": int,
            "pairs": int,
            "fallback": int,
            "run_id": int,
            "updated_at": str,
        },
        pk="sample_index",
        foreign_keys=[("run_id", "runs", "id")],
    )
    for view in ("progress", "sample_progress"):
        db[view].drop()
    db.create_view(
        "sample_progress",
        """
        with m as (
          select n, coalesce((select cast(value as integer) from meta where key = 'max_attempts'), n) as k
          from (select (select cast(value as integer) from meta where key = 'num_rejects') as n))
        select s.*, (s.failed = 0 and s.units >= m.n and (s.written >= m.n or s.units >= m.k)
            or s.sample_index in (select sample_index from paired_samples)) as complete
        from (
          select sample_index,
            count(*) as units,
            sum(status = 'written') as written,
            sum(status = 'same_as_gold') as same_as_gold,
            sum(status = 'duplicate') as duplicate,
            sum(status = 'no_sql') as no_sql,
            sum(status = 'dropped') as dropped,
            sum(status in ('oom', 'error', 'retry')) as failed,
            sum(role = 'chosen') as chosen,
            sum(role = 'rejected') as rejected,
            sum(coalesce(new_tokens, 0)) as new_tokens,
            round(sum(coalesce(gen_seconds, 0)), 3) as gen_seconds
          from units group by sample_index) s, m""",
    )
    db.create_view(
        "progress",
        """
        with m as (
          select (select cast(value as integer) from meta where key = 'samples_total') as samples,
            (select cast(value as integer) from meta where key = 'num_rejects') as n)
        select
          m.samples * m.n + (select count(*) from units where reject_index >= m.n) as units_total,
          (select count(*) from units where status not in ('oom', 'error', 'retry')) as units_done,
          (select count(*) from units where status in ('oom', 'error', 'retry')) as units_failed,
          m.samples as samples_total,
          (select coalesce(sum(complete), 0) from sample_progress) as samples_complete,
          (select count(*) from units where status = 'written') + (select count(*) from pairs) as lines_written,
          (select coalesce(sum(new_tokens), 0) from units) as tokens_generated,
          (select max(updated_at) from units) as last_update
        from m""",
    )


RECENT_MINUTES = 10  # the window of the `speed` view's recent rate


def speed_sql(minutes: int) -> str:
    """Throughput over all runs' time and over the last `minutes` of activity, and the ETA at
    the recent rate (the overall rate when there is none): the `speed` view for 10 minutes."""
    return f"""
        with p as (select * from progress),
          r as (select sum(seconds) as seconds from run_history),
          t as (select count(*) as units, coalesce(sum(new_tokens), 0) as tokens from units),
          w as (select strftime('%Y-%m-%dT%H:%M:%f+00:00', julianday(p.last_update) - {int(minutes)} / 1440.0)
                  as start from p),
          recent as (select count(*) as units, coalesce(sum(new_tokens), 0) as tokens
                     from units, w where units.updated_at >= w.start),
          span as (select (julianday(p.last_update) - julianday(max(w.start,
                     (select started_at from runs order by id desc limit 1)))) * 86400 as seconds from p, w),
          rates as (select t.units / nullif(r.seconds, 0) as units_per_s,
                      t.tokens / nullif(r.seconds, 0) as tokens_per_s,
                      case when span.seconds > 0 then recent.units / span.seconds end as recent_units_per_s,
                      case when span.seconds > 0 then recent.tokens / span.seconds end as recent_tokens_per_s,
                      max(coalesce(p.units_total, 0) - p.units_done, 0) as remaining
                    from p, r, t, recent, span)
        select {int(minutes)} as recent_minutes, units_per_s, tokens_per_s, recent_units_per_s, recent_tokens_per_s,
          remaining,
          case when remaining = 0 then 0.0
            else remaining / nullif(coalesce(nullif(recent_units_per_s, 0), units_per_s), 0) end as eta_s
        from rates"""


def m006_browse(db: sqlite_utils.Database) -> None:
    """What `prefgen browse` (and `ledger status`) show, as views: each sample's question,
    gold and database (`samples`), speed and ETA, progress over time, outcomes per database,
    failures, and every pair line whatever the pair mode."""
    db["samples"].create(
        {"sample_index": int, "db": str, "instruction": str, "input": str, "gold": str}, pk="sample_index"
    )
    db.create_view("speed", speed_sql(RECENT_MINUTES))
    db.create_view(
        "progress_over_time",
        """
        select minute, units, new_tokens, sum(units) over (order by minute) as units_done
        from (select substr(updated_at, 1, 16) as minute, count(*) as units,
                coalesce(sum(new_tokens), 0) as new_tokens from units group by minute)""",
    )
    db.create_view(
        "outcomes_by_database",
        """
        select coalesce(s.db, '') as db, u.status, u.verdict, u.role, count(*) as units
        from units u left join samples s using (sample_index)
        group by 1, 2, 3, 4""",
    )
    db.create_view(
        "failures",
        """
        select status, coalesce(nullif(detail, ''), status) as reason, count(*) as units,
          group_concat(distinct sample_index) as samples from units
        where status in ('error', 'oom', 'no_sql', 'timeout', 'retry', 'too_long')
        group by status, reason order by units desc""",
    )
    db.create_view(
        "pair_lines",
        """
        select u.sample_index, u.reject_index as pair_index, coalesce(s.db, '') as db, 'gold' as chosen_source,
          json_extract(u.line, '$.chosen') as chosen, json_extract(u.line, '$.rejected') as rejected,
          u.verdict as rejected_verdict, u.seed as rejected_seed, u.line_offset
        from units u left join samples s using (sample_index) where u.status = 'written'
        union all
        select p.sample_index, p.pair_index, coalesce(s.db, ''), p.chosen_source,
          json_extract(p.line, '$.chosen'), json_extract(p.line, '$.rejected'),
          json_extract(p.line, '$.rejected_verdict'), json_extract(p.line, '$.rejected_seed'), p.line_offset
        from pairs p left join samples s using (sample_index)""",
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    m001_initial,
    m002_views,
    m003_same_as_gold,
    m004_verdicts,
    m005_onpolicy_pairs,
    m006_browse,
]


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


def _samples_below(max_sample: int | None) -> tuple[str, list]:
    """A `where` condition (and its parameters) for samples below --max-samples, if set."""
    return ("sample_index < ?", [max_sample]) if max_sample is not None else ("1", [])


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
        applied = {row["name"] for row in self.db[MIGRATIONS_TABLE].rows}
        check_known(applied)
        if len(applied) < len(MIGRATIONS):
            # A ledger from an older prefgen: bring its schema (views) up to date once, then read.
            self.db.close()
            writer = _connect(self.path, readonly=False)
            writer.execute("PRAGMA busy_timeout = 10000")
            migrate(writer)
            writer.close()
            self.db = _connect(self.path, readonly=True)

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
        with self.db.atomic():
            self.db["runs"].update(run_id, {"ended_at": now(), "status": status, "stop_reason": reason, "error": error})

    def record_event(self, run_id: int, kind: str, detail: dict) -> None:
        with self.db.atomic():
            self.db["events"].insert(
                {"run_id": run_id, "at": now(), "kind": kind, "detail": orjson.dumps(detail).decode()}
            )

    def runs(self) -> list[dict]:
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
    ) -> None:
        """Record a batch of units (with their samples' `records`; with --pairs onpolicy, the
        pairs and samples it completes) and the output's new committed length in one transaction."""
        stamp = now()
        try:
            with self.db.atomic():
                self.db["samples"].insert_all(records, pk="sample_index", ignore=True)
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
            self.db["events"].insert(
                {
                    "run_id": None,
                    "at": now(),
                    "kind": "retry_marked",
                    "detail": orjson.dumps({"statuses": statuses, "units": count}).decode(),
                }
            )
        return count

    # --- inspection (read-only) ---------------------------------------------------------------------
    def progress(self) -> dict:
        return next(self.db.query("select * from progress"))

    def run_history(self) -> list[dict]:
        return list(self.db.query("select * from run_history"))

    def paired_summary(self) -> dict:
        """--pairs onpolicy: what the model's own answers gave, over the samples paired so far."""
        return next(
            self.db.query(
                "select count(*) as samples, coalesce(sum(chosen_candidates > 0), 0) as with_correct,"
                " coalesce(sum(chosen_candidates = 0), 0) as without_correct,"
                " coalesce(sum(rejected_candidates = 0), 0) as without_wrong,"
                " coalesce(sum(pairs), 0) as pairs, coalesce(sum(fallback), 0) as fallbacks,"
                " coalesce(sum(pairs > 0), 0) as with_pairs from paired_samples"
            )
        )

    def sample_pairs(self, sample_index: int) -> list[dict]:
        return list(self.db.query("select * from pairs where sample_index = ? order by pair_index", [sample_index]))

    def sample_units(self, sample_index: int) -> list[dict]:
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
        return list(self.db.query("select * from failures"))

    def speed(self, minutes: int = RECENT_MINUTES) -> dict:
        """The `speed` view's row, for a recent window of `minutes`."""
        return next(self.db.query(speed_sql(minutes)))

    def last_error(self) -> dict | None:
        rows = list(
            self.db.query(
                "select id as run_id, ended_at as at, stop_reason, error from runs"
                " where error is not null and error != '' order by id desc limit 1"
            )
        )
        return rows[0] if rows else None
