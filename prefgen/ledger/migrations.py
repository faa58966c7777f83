"""The ledger's schema as named, append-only migrations, recorded in `_prefgen_migrations`.

Ledgers store the names of the migrations they have had, so a name, once released, never
changes and a migration is never removed: add a new one at the end instead. Migrations own the
tables; the views are defined in `views.py` and replaced whenever they differ, so a migration
carries no view. (m002 and m003 created only views: they are kept, empty, for their names.)
"""

from __future__ import annotations

import datetime
from typing import Callable

import sqlite_utils

from prefgen.errors import LedgerError
from prefgen.ledger import views

MIGRATIONS_TABLE = "_prefgen_migrations"


def now() -> str:
    """The current UTC time as the ledger writes it (ISO 8601, milliseconds)."""
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
    """The first views (sample_progress, progress, run_history): now in views.py."""


def m003_same_as_gold(db: sqlite_utils.Database) -> None:
    """sample_progress counted the rejects that were the gold query again: now in views.py."""


def m004_verdicts(db: sqlite_utils.Database) -> None:
    """Execution verdicts per unit (--db-root); the `dropped` status and --max-attempts changed
    only the views."""
    for column, kind in (("verdict", str), ("verdict_detail", str), ("multiset_differs", int), ("order_differs", int)):
        db["units"].add_column(column, kind)
    db["units"].create_index(["verdict"])


def m005_onpolicy_pairs(db: sqlite_utils.Database) -> None:
    """--pairs onpolicy: each candidate's role, the pairs formed (their lines, like written
    units'), and one row per sample whose pairs are formed."""
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


def m006_browse(db: sqlite_utils.Database) -> None:
    """Each sample's question, gold and database (`samples`), for `prefgen browse`."""
    db["samples"].create(
        {"sample_index": int, "db": str, "instruction": str, "input": str, "gold": str}, pk="sample_index"
    )


def m007_evaluators(db: sqlite_utils.Database) -> None:
    """Each executed candidate's score by Spider's and by BIRD's rule (1 right, 0 wrong, NULL not
    scored) and a digest of its result rows (sql/verdict.py)."""
    for column, kind in (("spider_correct", int), ("bird_correct", int), ("result_digest", str)):
        db["units"].add_column(column, kind)


def m008_rewards(db: sqlite_utils.Database) -> None:
    """Each judged candidate's execution reward (1 correct, 0.1 executes but wrong, 0 fails; NULL
    when unverifiable or unjudged): config.execution_reward."""
    db["units"].add_column("reward", float)


def m009_variants(db: sqlite_utils.Database) -> None:
    """--db-variants: the database variant (1..K) that told a wrong answer apart from the gold
    (sql/variants.py); NULL when none did or none was checked."""
    db["units"].add_column("variant", int)


def m010_answer_source(db: sqlite_utils.Database) -> None:
    """Where each unit's answer came from: `generated` by this ledger's runs, or `reused` from an
    earlier run's ledger (--reuse-answers); NULL in ledgers made before."""
    db["units"].add_column("source", str)


def m011_gold_suspect(db: sqlite_utils.Database) -> None:
    """Each sample's gold check (suspects.py): 1 when its gold looks wrong, with why; 0 when not;
    NULL when not checked (no --db-root, a ledger made before, or the sample not complete)."""
    db["samples"].add_column("gold_suspect", int)
    db["samples"].add_column("suspect_detail", str)


def m012_truncated(db: sqlite_utils.Database) -> None:
    """Whether each unit's answer ended without an end-of-sequence token (1: cut by --max-new-tokens
    or by the context's room; 0: ended; NULL: no answer, or a ledger made before). A later run at
    a larger cap generates again only the units cut at the cap (reuse.py)."""
    db["units"].add_column("truncated", int)


# Migrations that only add columns no view and no reader of prefgen's reads: a ledger without
# them is still read (status, browse, export) without being written; its first writing open adds
# them. Readers of an older prefgen's ledger thus keep working after an upgrade.
READER_OPTIONAL = frozenset(
    {
        "m007_evaluators",
        "m008_rewards",
        "m009_variants",
        "m010_answer_source",
        "m011_gold_suspect",
        "m012_truncated",
    }
)

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    m001_initial,
    m002_views,
    m003_same_as_gold,
    m004_verdicts,
    m005_onpolicy_pairs,
    m006_browse,
    m007_evaluators,
    m008_rewards,
    m009_variants,
    m010_answer_source,
    m011_gold_suspect,
    m012_truncated,
]


def applied_migrations(db: sqlite_utils.Database) -> set[str]:
    """The names of the migrations this ledger has had (none for a new file)."""
    if MIGRATIONS_TABLE not in db.table_names():
        return set()
    return {row["name"] for row in db[MIGRATIONS_TABLE].rows}


def pending_migrations(applied: set[str], reading: bool = False) -> list[str]:
    """The migrations a ledger that has had `applied` still needs, in order (`reading`: those a
    read-only open cannot do without); refuses a ledger from a newer prefgen (one that has had
    migrations this one does not know)."""
    unknown = applied - {m.__name__ for m in MIGRATIONS}
    if unknown:
        raise LedgerError(
            f"this ledger was written by a newer prefgen (it has migrations {', '.join(sorted(unknown))})",
            hint="upgrade prefgen to read it",
        )
    skipped = READER_OPTIONAL if reading else frozenset()
    return [m.__name__ for m in MIGRATIONS if m.__name__ not in applied and m.__name__ not in skipped]


def upgrade(db: sqlite_utils.Database) -> None:
    """Bring a ledger opened for writing up to date: the migrations it has not had, then the
    current views, in one transaction; does not write when there is nothing to change."""
    if not pending_migrations(applied_migrations(db)) and views.views_are_current(db.conn):
        return
    # IMMEDIATE: take the write lock first, then look again, so that two processes opening
    # the same older ledger do not both apply the same migration.
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        db[MIGRATIONS_TABLE].create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
        pending = set(pending_migrations(applied_migrations(db)))
        for migration in MIGRATIONS:
            if migration.__name__ in pending:
                migration(db)
                db[MIGRATIONS_TABLE].insert({"name": migration.__name__, "applied_at": now()})
        views.create_views(db.conn)
    except BaseException:
        db.conn.rollback()
        raise
    db.conn.commit()
