"""The ledger's views: every one defined here, once.

They make the common questions one-line queries, and they are what `prefgen ledger status`,
`prefgen browse` and the documented queries read. Migrations own the tables; the views are not
part of them: a ledger opened for writing gets these views whenever its own differ (drop and
create, in the migration transaction), and a read-only reader of a ledger whose views are older
gets them as TEMP views on its own connection, so the file is never written to read it.

The SQL texts are kept as earlier prefgen versions wrote them, so that a ledger they made
already has the current views and needs no rewrite to be read.
"""

from __future__ import annotations

import sqlite3

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


# name -> the view's SQL. A sample is complete once it has num_rejects written rejects, has used
# its --max-attempts, or has its pairs settled in `paired_samples` (--pairs onpolicy; with --pairs
# gold, a sample --gold-suspect skip left without pairs).
VIEWS: dict[str, str] = {
    "sample_progress": """
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
    "progress": """
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
    "run_history": """
        select r.id, r.started_at, r.ended_at, r.status, r.stop_reason, r.units_done, r.error,
          (select count(*) from events e where e.run_id = r.id and e.kind = 'oom_backoff') as oom_backoffs,
          round((julianday(coalesce(r.ended_at,
            (select max(updated_at) from units u where u.run_id = r.id), r.started_at))
            - julianday(r.started_at)) * 86400, 3) as seconds
        from runs r order by r.id""",
    "speed": speed_sql(RECENT_MINUTES),
    "progress_over_time": """
        select minute, units, new_tokens, sum(units) over (order by minute) as units_done
        from (select substr(updated_at, 1, 16) as minute, count(*) as units,
                coalesce(sum(new_tokens), 0) as new_tokens from units group by minute)""",
    "outcomes_by_database": """
        select coalesce(s.db, '') as db, u.status, u.verdict, u.role, count(*) as units
        from units u left join samples s using (sample_index)
        group by 1, 2, 3, 4""",
    "failures": """
        select status, coalesce(nullif(detail, ''), status) as reason, count(*) as units,
          group_concat(distinct sample_index) as samples from units
        where status in ('error', 'oom', 'no_sql', 'timeout', 'retry', 'too_long')
        group by status, reason order by units desc""",
    "pair_lines": """
        select u.sample_index, u.reject_index as pair_index, coalesce(s.db, '') as db, 'gold' as chosen_source,
          json_extract(u.line, '$.chosen') as chosen, json_extract(u.line, '$.rejected') as rejected,
          u.verdict as rejected_verdict, u.seed as rejected_seed, u.line_offset
        from units u left join samples s using (sample_index) where u.status = 'written'
        union all
        select p.sample_index, p.pair_index, coalesce(s.db, ''), p.chosen_source,
          json_extract(p.line, '$.chosen'), json_extract(p.line, '$.rejected'),
          json_extract(p.line, '$.rejected_verdict'), json_extract(p.line, '$.rejected_seed'), p.line_offset
        from pairs p left join samples s using (sample_index)""",
}


def stored_views(conn: sqlite3.Connection, schema: str = "main") -> dict[str, str]:
    """The views a ledger holds: name -> their SQL after `CREATE VIEW name AS ` (the name's
    quoting differs between sqlite-utils versions, the SQL does not)."""
    rows = conn.execute(f"select name, sql from {schema}.sqlite_master where type = 'view'")
    return {name: sql.partition(" AS ")[2] for name, sql in rows}


def views_are_current(conn: sqlite3.Connection) -> bool:
    """Whether the ledger's own views are exactly these (no view missing, none differing)."""
    stored = stored_views(conn)
    return all(stored.get(name) == sql for name, sql in VIEWS.items())


def create_views(conn: sqlite3.Connection) -> None:
    """Replace the ledger's views by these (the caller holds the write transaction)."""
    for name in VIEWS:
        conn.execute(f'DROP VIEW IF EXISTS main."{name}"')
    for name, sql in VIEWS.items():
        conn.execute(f'CREATE VIEW "{name}" AS {sql}')


def create_temp_views(conn: sqlite3.Connection) -> None:
    """These views as TEMP views, on this connection only: they take precedence over a
    read-only ledger's older views of the same names, and leave the file as it is."""
    for name, sql in VIEWS.items():
        conn.execute(f'CREATE TEMP VIEW IF NOT EXISTS "{name}" AS {sql}')
