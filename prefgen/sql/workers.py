"""Execution verdicts for many rejects: cached per database, and run in worker processes.

`Checker` judges one (database, gold, reject) at a time, reusing connections and gold
results; `prefgen verify` and `prefgen pair` use it directly. Every check against a database
happens in `Checker.__call__` (one place: a check on further databases belongs there too), which
hands the connection and a cached gold to verdict.judge_execution. `CheckerPool` runs checkers in worker processes
so that `prefgen generate --db-root` executes SQL while the model generates: the generating
process only hands over strings and gets verdicts back.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from functools import partial

from prefgen.config import CheckPolicy
from prefgen.errors import CheckError
from prefgen.runtime.processes import guard_children
from prefgen.sql import variants
from prefgen.sql.execute import connect, database_path, run_query
from prefgen.sql.verdict import judge_execution
from prefgen.units import Verdict

GOLD_CACHE = 256  # gold results kept per process (a sample's rejects share one gold)


class Checker:
    """Judges rejects against their databases, reusing connections and gold results."""

    def __init__(self, policy: CheckPolicy):
        self.policy = policy
        self.connections: dict[str, object] = {}
        self.golds: dict[tuple[str, str], object] = {}
        self.variants = variants.Variants(
            policy.db_variants, policy.db_variant_max_mb, policy.variant_seed, policy.time_limit, policy.max_rows
        )

    def connection(self, db_id: str):
        if db_id not in self.connections:
            path = database_path(self.policy.db_root, db_id)
            self.connections[db_id] = connect(path) if path.is_file() else None
        return self.connections[db_id]

    def gold(self, db_id: str, conn, sql: str):
        """The outcome of a gold query (or of its variant without DISTINCT), cached."""
        key = (db_id, sql)
        if key not in self.golds:
            if len(self.golds) >= GOLD_CACHE:
                self.golds.clear()
            self.golds[key] = run_query(conn, sql, self.policy.time_limit, self.policy.max_rows)
        return self.golds[key]

    def __call__(self, db_id: str, gold: str, rejected: str) -> Verdict:
        """The verdict on `rejected` against `gold` on database `db_id`, under the policy's --evaluator."""
        conn = self.connection(db_id)
        if conn is None:
            return judge_execution(None, gold, rejected)
        policy = self.policy

        def judge(conn, gold_of):  # on the database, then (--db-variants) on each of its variants
            return judge_execution(
                conn, gold, rejected, gold_of(gold), policy.time_limit, policy.max_rows, policy.evaluator, gold_of
            )

        verdict = judge(conn, partial(self.gold, db_id, conn))
        path = database_path(policy.db_root, db_id)
        return variants.confirm(self.variants, db_id, path, verdict, judge, policy.evaluator)

    def close(self) -> None:
        for conn in self.connections.values():
            if conn is not None:
                conn.close()
        self.connections.clear()
        self.variants.close()


_worker_checker: Checker | None = None


def _start_worker(policy: CheckPolicy) -> None:
    global _worker_checker
    # Ctrl-C and SIGTERM go to the whole process group: the parent decides when to stop (and
    # if it is killed, prefgen.runtime.processes ends this worker with it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _worker_checker = Checker(policy)


def _check_in_worker(db_id: str, gold: str, rejected: str) -> Verdict:
    return _worker_checker(db_id, gold, rejected)


def _warm_up() -> None:
    import sqlglot  # noqa: F401  (verdicts parse the gold's ORDER BY / LIMIT with it)


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _died(exc: BaseException) -> CheckError:
    return CheckError(
        f"a process executing SQL for --db-root died ({exc})",
        hint="run the same command again: nothing committed is lost (lower --exec-workers if memory is short)",
    )


class CheckerPool:
    """Checkers in worker processes (spawned, never forked from a process running torch), which
    die with the run, even when it is killed with SIGKILL."""

    def __init__(self, policy: CheckPolicy, workers: int = 0):
        import multiprocessing

        guard_children()  # before the workers start: they inherit the run's token
        self.policy = policy
        self.workers = workers or default_workers()
        self.executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(policy,),
        )
        # start the workers now (they spawn on demand), so they are up before the first batch
        for _ in range(self.workers):
            self.executor.submit(_warm_up)

    def submit(self, db_id: str, gold: str, rejected: str) -> Future:
        try:
            return self.executor.submit(_check_in_worker, db_id, gold, rejected)
        except BrokenExecutor as exc:
            raise _died(exc) from exc

    @staticmethod
    def result(future: Future) -> Verdict:
        """A submitted check's verdict; a worker that died (killed, out of memory) is an error."""
        try:
            return future.result()
        except BrokenExecutor as exc:
            raise _died(exc) from exc

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
