"""Database variants (--db-variants K): a correct answer must stay correct on perturbed copies.

One database can make a wrong query look right by coincidence (`WHERE id = 3` where row 3 is
the one named 'X'; `COUNT(col)` where the column has no NULL). Spider's test-suite accuracy
(Zhong, Yu and Klein, EMNLP 2020) checks every query on a suite of databases for this reason;
prefgen does the same, with K copies of each database it derives itself:

- values shuffled within each column that is no key (not in a PRIMARY KEY, a FOREIGN KEY, a
  column another table's foreign key references, or a UNIQUE index), so that a value no longer
  sits in the row it sat in;
- a subset of the rows: rows no foreign key references are dropped at random;
- duplicated rows, in tables without a primary key or unique index (a duplicate is legal there).

Types and keys stay valid: values move only within their column, and no referenced row goes.
Variant i of database D is drawn from random.Random(f"{seed}:{D}:{i}"), built once into a
cache outside the user's database folder (~/.cache/prefgen/variants, or PREFGEN_VARIANT_CACHE),
keyed by the database's bytes and the seed, made read-only, and opened like the original
(execute.connect: read-only, every write refused).

Each evaluator scores an answer over the whole suite, as the test-suite metric does: right
only if right on the original and on every variant where the gold executes. Those suite scores
are recorded and decide the verdict as one database's scores do (sql/verdict.py): `equivalent`
when every selected evaluator is right over the suite, `disputed` when they disagree (an answer
Spider's rule scores right everywhere and BIRD's wrong on one variant is never a reject), and
`wrong_result`, naming the variant that caught it, when none is right (confirm says more).
Only answers some evaluator scores right on the original are run on the variants.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from prefgen.config import DEFAULT_EVALUATOR, LENIENT
from prefgen.sql.evaluators import BIRD, SPIDER, selected_evaluators
from prefgen.sql.execute import Outcome, connect, run_query
from prefgen.units import DISPUTED, EQUIVALENT, TIMEOUT, UNVERIFIABLE, WRONG_RESULT, Verdict

log = logging.getLogger("prefgen")

# The rule verdicts on variants follow, recorded in a ledger (meta verdict_rule): each evaluator
# scored over the whole suite. Ledgers judged before it hold no value.
VERDICT_RULE = "suite"
CACHE_ENV = "PREFGEN_VARIANT_CACHE"
FORMAT = "1"  # part of the cache key: a change to how variants are drawn gets new files
DROP_SHARE = 0.25  # of the rows nothing references, the share a variant drops
DUPLICATE_SHARE = 0.2  # of the rows of a table without keys, the share a variant duplicates
GOLD_CACHE = 256
STALE_SECONDS = 3600  # a temporary file this old is left by a build that was killed


def cache_root() -> Path:
    """Where variants are kept: PREFGEN_VARIANT_CACHE, or ~/.cache/prefgen/variants."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "prefgen" / "variants"


def _digest(path: Path, seed: int, db_id: str) -> str:
    digest = hashlib.sha256(f"{FORMAT}:{seed}:{db_id}:".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _schema(conn: sqlite3.Connection) -> dict[str, dict]:
    """Per table: its columns, its key columns, whether it may hold duplicates, and the
    (column, referencing table, referencing column) of each foreign key pointing at it."""
    tables_sql = "select name from sqlite_master where type = 'table' and name not like 'sqlite_%'"
    names = [r[0] for r in conn.execute(tables_sql)]
    tables = {}
    for name in names:
        info = conn.execute(f"pragma table_info({_quote(name)})").fetchall()
        pk = {r[1].lower() for r in info if r[5]}
        unique = set()
        for index in conn.execute(f"pragma index_list({_quote(name)})").fetchall():
            if index[2]:
                unique |= {r[2].lower() for r in conn.execute(f"pragma index_info({_quote(index[1])})") if r[2]}
        fks = conn.execute(f"pragma foreign_key_list({_quote(name)})").fetchall()
        tables[name.lower()] = {
            "name": name,
            "columns": [r[1] for r in info],
            "pk": [r[1] for r in info if r[5]],
            "keys": pk | unique | {fk[3].lower() for fk in fks},
            "keyless": not pk and not unique,
            "fks": fks,
            "referenced": [],
        }
    for table in tables.values():
        for fk in table["fks"]:
            parent = tables.get(fk[2].lower())
            if parent is None:
                continue
            column = fk[4] or (parent["pk"][0] if len(parent["pk"]) == 1 else None)
            if column:
                parent["keys"].add(column.lower())
                parent["referenced"].append((column, table["name"], fk[3]))
    return tables


def _shuffle_columns(conn, table: dict, rng: random.Random) -> None:
    name = _quote(table["name"])
    rowids = [r[0] for r in conn.execute(f"select rowid from {name} order by rowid")]
    for column in table["columns"]:
        if column.lower() in table["keys"]:
            continue
        values = [r[0] for r in conn.execute(f"select {_quote(column)} from {name} order by rowid")]
        rng.shuffle(values)
        conn.executemany(f"update {name} set {_quote(column)} = ? where rowid = ?", zip(values, rowids, strict=True))


def _drop_rows(conn, table: dict, rng: random.Random) -> None:
    name = _quote(table["name"])
    referenced = [
        (column, {r[0] for r in conn.execute(f"select distinct {_quote(child_col)} from {_quote(child)}")})
        for column, child, child_col in table["referenced"]
    ]
    columns = ", ".join(_quote(c) for c, _ in referenced) or "null"
    rows = conn.execute(f"select rowid, {columns} from {name} order by rowid").fetchall()
    free = [r[0] for r in rows if not any(r[i + 1] in used for i, (_, used) in enumerate(referenced))]
    dropped = [rowid for rowid in free if rng.random() < DROP_SHARE]
    if len(dropped) < len(rows):  # never empty a table
        conn.executemany(f"delete from {name} where rowid = ?", [(rowid,) for rowid in dropped])


def _duplicate_rows(conn, table: dict, rng: random.Random) -> None:
    name = _quote(table["name"])
    rowids = [r[0] for r in conn.execute(f"select rowid from {name} order by rowid")]
    copied = [(rowid,) for rowid in rowids if rng.random() < DUPLICATE_SHARE]
    columns = ", ".join(_quote(c) for c in table["columns"])
    conn.executemany(f"insert into {name} ({columns}) select {columns} from {name} where rowid = ?", copied)


def perturb(conn: sqlite3.Connection, rng: random.Random) -> None:
    """Shuffle, thin and duplicate the rows of every table of a writable copy, keeping keys valid.
    A table the perturbation cannot change (WITHOUT ROWID, a CHECK it would break) stays as it was."""
    triggers = conn.execute("select name, sql from sqlite_master where type = 'trigger'").fetchall()
    for name, _ in triggers:  # a copy's triggers would rewrite other tables as rows move
        conn.execute(f"drop trigger {_quote(name)}")
    tables = _schema(conn)
    for key in sorted(tables):
        table = tables[key]
        conn.execute("savepoint perturb")
        try:
            _shuffle_columns(conn, table, rng)
            _drop_rows(conn, table, rng)
            if table["keyless"]:
                _duplicate_rows(conn, table, rng)
        except sqlite3.Error:
            conn.execute("rollback to perturb")
        conn.execute("release perturb")
    for _, sql in triggers:
        conn.execute(sql)


def build(source: Path, target: Path, seed: int, db_id: str, index: int) -> None:
    """Variant `index` of the database at `source`, written read-only to `target` (atomically:
    several worker processes may build the same variant at once, and get the same bytes)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(handle)
    try:
        original = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        copy = sqlite3.connect(temp, isolation_level=None)
        original.backup(copy)
        original.close()
        copy.execute("begin")
        perturb(copy, random.Random(f"{seed}:{db_id}:{index}"))
        copy.execute("commit")
        copy.execute("vacuum")
        copy.close()
        os.chmod(temp, 0o444)
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


class Variants:
    """The variants of each database one checker judges on: built or found in the cache once,
    opened read-only, with their gold results cached."""

    def __init__(self, count: int, max_mb: float, seed: int, time_limit: float, max_rows: int):
        self.count, self.max_mb, self.seed = count, max_mb, seed
        self.limits = (time_limit, max_rows)
        self.connections: dict[str, list | None] = {}
        self.golds: dict[tuple, Outcome] = {}

    def of(self, db_id: str, path: Path) -> list | None:
        """The read-only connections to `db_id`'s variants (None: too large, checked on the original only)."""
        if db_id not in self.connections:
            size_mb = path.stat().st_size / 1e6
            if size_mb > self.max_mb:
                log.warning(
                    "database %s is %.0f MB, over --db-variant-max-mb %s: its answers are checked on it alone",
                    db_id,
                    size_mb,
                    self.max_mb,
                )
                self.connections[db_id] = None
            else:
                folder = cache_root() / _digest(path, self.seed, db_id)
                for stale in folder.glob("*.tmp"):  # a build killed half-way (a fresh one is seconds old)
                    with contextlib.suppress(FileNotFoundError):  # another worker may remove it first
                        if time.time() - stale.stat().st_mtime > STALE_SECONDS:
                            stale.unlink()
                paths = [folder / f"variant-{i}.sqlite" for i in range(1, self.count + 1)]
                for index, target in enumerate(paths, start=1):
                    if not target.exists():
                        build(path, target, self.seed, db_id, index)
                self.connections[db_id] = [connect(target) for target in paths]
        return self.connections[db_id]

    def gold(self, key: tuple, conn, sql: str) -> Outcome:
        """The outcome of a gold query on a variant, cached (a sample's answers share one gold)."""
        if key not in self.golds:
            if len(self.golds) >= GOLD_CACHE:
                self.golds.clear()
            self.golds[key] = run_query(conn, sql, *self.limits)
        return self.golds[key]

    def close(self) -> None:
        for conns in self.connections.values():
            for conn in conns or ():
                conn.close()
        self.connections.clear()


def _judged(variants: Variants, db_id: str, path: Path, judge: Callable) -> Iterator[tuple[int, Verdict]]:
    """(index, verdict) on each variant of `db_id` in turn (none when the database is too large)."""
    for index, conn in enumerate(variants.of(db_id, path) or (), start=1):

        def gold_of(sql: str, conn=conn, index=index) -> Outcome:
            return variants.gold((db_id, index, sql), conn, sql)

        yield index, judge(conn, gold_of)


def _caught(index: int, count: int, detail: str) -> str:
    return f"differs on variant {index} of {count}" + (f": {detail}" if detail else "")


def _confirm_lenient(variants: Variants, db_id: str, path: Path, verdict: Verdict, judge: Callable) -> Verdict:
    """The rule of ledgers made before evaluator profiles, unchanged: an equivalent answer that
    some variant where the gold executes tells apart from the gold is `wrong_result`, both
    scores false."""
    if verdict.verdict != EQUIVALENT:
        return verdict
    for index, outcome in _judged(variants, db_id, path, judge):
        if outcome.verdict in (EQUIVALENT, UNVERIFIABLE, TIMEOUT):  # the same, or this variant cannot tell
            continue
        detail = _caught(index, variants.count, outcome.detail)
        return replace(verdict, verdict=WRONG_RESULT, detail=detail, spider=False, bird=False, variant=index)
    return verdict


def _suite_verdict(verdict: Verdict, scores: dict, selected: tuple, caught: dict, count: int) -> Verdict:
    """The verdict of the suite scores: the original's while no variant changed a selected
    evaluator's score; else `disputed` when a selected one stays right, `wrong_result` when none does."""
    scored = replace(verdict, spider=scores[SPIDER], bird=scores[BIRD])
    if not caught or verdict.verdict not in (EQUIVALENT, DISPUTED):
        return scored
    events = [f"on the original: {verdict.detail}"] if verdict.verdict == DISPUTED else []
    events += [_caught(index, count, detail) for index, detail in sorted(caught.items())]
    status = DISPUTED if any(scores[name] for name in selected) else WRONG_RESULT
    return replace(scored, verdict=status, detail=" | ".join(events), variant=min(caught))


def confirm(
    variants: Variants, db_id: str, path: Path, verdict: Verdict, judge: Callable, evaluator: str = DEFAULT_EVALUATOR
) -> Verdict:
    """`verdict` (the original database's) judged over the suite: the original and its variants,
    as Spider's test-suite accuracy scores a query. `judge(conn, gold_of)` judges the answer on
    one variant's connection (gold_of runs a gold query, cached).

    Each evaluator's suite score is right only if it is right on the original and on every
    variant where the answer can be told apart (a variant whose verdict is `unverifiable`, the
    gold failing there say, or `timeout` does not count; nor, for one evaluator, a variant where
    it gives no score). The recorded scores (Verdict.spider / .bird) become the suite scores, and
    the selected evaluators' suite scores decide as the original's decide on one database: all
    right, the original verdict stands (`equivalent`); a selected one right, `disputed` (never a
    reject, never a chosen); none, `wrong_result`. So an answer `disputed` on the original stays
    disputed, or is `wrong_result` when the evaluator that scored it right is wrong on a variant;
    an answer no evaluator scores right on the original is not run on the variants (no score can
    change). The detail names the variants that changed a selected evaluator's score, each with its
    own detail (which names each evaluator's score where they disagree there), and `variant` the
    first. Under `lenient` (ledgers made before evaluator profiles) the old rule holds unchanged."""
    if variants.count <= 0:
        return verdict
    if evaluator == LENIENT:
        return _confirm_lenient(variants, db_id, path, verdict, judge)
    scores = {SPIDER: verdict.spider, BIRD: verdict.bird}
    if True not in scores.values():
        return verdict
    selected = selected_evaluators(evaluator)
    caught: dict[int, str] = {}  # variant -> its detail, where a selected evaluator right so far is wrong
    for index, outcome in _judged(variants, db_id, path, judge):
        if outcome.verdict in (UNVERIFIABLE, TIMEOUT):  # this variant cannot tell
            continue
        for name, score in ((SPIDER, outcome.spider), (BIRD, outcome.bird)):
            if score is False and scores[name]:
                scores[name] = False
                if name in selected:
                    caught.setdefault(index, outcome.detail)
        if True not in scores.values():
            break
    return _suite_verdict(verdict, scores, selected, caught, variants.count)
