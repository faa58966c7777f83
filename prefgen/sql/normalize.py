"""SQL normalization for judging: two queries that differ only in layout compare equal.

Layout means whitespace, keyword case, identifier quoting, a trailing semicolon and the
spelling of aliases (`T1` and `a` are both the first table alias). String literals keep their
case: SQLite's `=` is case-sensitive, so `'United'` and `'united'` are different queries.
Quoted identifiers keep their case too, because Spider writes string literals in double
quotes, which SQLite reads as strings when no such column exists (and sqlglot as
identifiers). A query sqlglot cannot parse falls back to its whitespace-collapsed text.
"""

from __future__ import annotations

import functools
import logging
import re

# sqlglot warns on stderr for every query it reads as an opaque command; model output is full
# of those, and the fallback is what prefgen wants anyway.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

_PLAIN = re.compile(r"[a-z_][a-z0-9_]*\Z")
# SQLite folds the case of ASCII letters only: `Sänger` and `sänger` are the same table, but
# `SÄNGER` is another one.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def collapse(sql: str) -> str:
    """Whitespace collapsed to single spaces, trailing semicolons dropped."""
    return " ".join(sql.split()).rstrip(";").rstrip()


@functools.lru_cache(maxsize=8192)  # a gold query is compared with each of its rejects
def normalize_sql(sql: str) -> str:
    """A canonical form of `sql` (see the module docstring)."""
    import sqlglot
    from sqlglot import exp

    try:
        statements = [s for s in sqlglot.parse(sql, read="sqlite") if s is not None]
    except (sqlglot.errors.SqlglotError, RecursionError):
        return collapse(sql)
    if len(statements) != 1:
        return collapse(sql)
    tree = statements[0]
    renames = _alias_names(tree, exp)
    for ident in list(tree.find_all(exp.Identifier)):
        key = ident.name.translate(_ASCII_LOWER)
        if key in renames and _is_alias_reference(ident, exp):
            ident.replace(exp.Identifier(this=renames[key], quoted=False))
        elif not ident.quoted:
            ident.replace(exp.Identifier(this=key, quoted=False))
        elif _PLAIN.match(ident.name):
            ident.replace(exp.Identifier(this=ident.name, quoted=False))
    return tree.sql(dialect="sqlite")


def _alias_names(tree, exp) -> dict[str, str]:
    """Table aliases -> t1, t2, ... and column aliases -> c1, c2, ... in order of appearance."""
    renames: dict[str, str] = {}
    tables = columns = 0
    for node in tree.find_all(exp.TableAlias, exp.Alias, bfs=False):
        ident = node.args.get("this") if isinstance(node, exp.TableAlias) else node.args.get("alias")
        key = ident.name.translate(_ASCII_LOWER) if isinstance(ident, exp.Identifier) else None
        if key is None or key in renames:
            continue
        if isinstance(node, exp.TableAlias):
            tables += 1
            renames[key] = f"t{tables}"
        else:
            columns += 1
            renames[key] = f"c{columns}"
    return renames


def _is_alias_reference(ident, exp) -> bool:
    """The identifier names an alias: where it is defined, as a column's qualifier, or alone
    (ORDER BY cnt)."""
    parent = ident.parent
    if isinstance(parent, exp.TableAlias) or (isinstance(parent, exp.Alias) and parent.args.get("alias") is ident):
        return True
    if isinstance(parent, exp.Column):
        return parent.args.get("table") is ident or not parent.args.get("table")
    return False


def dedup_key(sql: str, mode: str) -> str:
    """What two rejects must share to be duplicates under a --dedup-rejects mode (exact: the
    text; sql: the text normalized)."""
    return normalize_sql(sql) if mode == "sql" else sql
