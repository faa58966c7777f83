"""The local executor: the flow's steps run in this process, batch after batch.

Three things overlap: a batch generates (in the engine's background thread) while the batch
before it is judged and its SQL executed (in worker processes), and batches whose verdicts are
in are committed, always in batch order. Each commit settles the samples it completes
(flow/settle.py): with --max-attempts the further attempts they need join the units still to
generate; with --pairs onpolicy, once a sample needs nothing more, its pairs are committed with it.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future
from itertools import islice
from typing import Callable, Iterator

from prefgen.engines.base import Engine
from prefgen.errors import Interrupted
from prefgen.flow.batching import batches, window_start
from prefgen.flow.judge import judge_batch, with_verdict
from prefgen.flow.plan import plan_units
from prefgen.flow.run import Run
from prefgen.flow.settle import OpenSamples
from prefgen.runtime.faults import fault_point
from prefgen.units import CANDIDATE, WRITTEN, Judged, WorkUnit

log = logging.getLogger("prefgen")

VERDICT_BACKLOG = 2  # batches judged but waiting for execution verdicts before we wait for them
AUTO_PROBE_RECORDS = 64  # --batch-size auto sizes batches for the longest of the first records


class BatchRows:
    """Rows per batch: --batch-size, or for `auto` the size found at start-up, lowered after an
    out-of-memory backoff to the size that was retried, so that later batches start there."""

    def __init__(self, run: Run, rows: int, auto: bool):
        self.run, self.rows, self.auto = run, rows, auto

    def __call__(self) -> int:
        return self.rows

    def backoff(self, rows: int, half: int) -> None:
        """An out-of-memory backoff from `rows` to `half` rows at once: warn and record it."""
        log.warning("out of memory with %d rows: retrying as batches of %d", rows, half)
        detail = {"rows": rows, "retry_rows": half}
        if self.auto and half < self.rows:
            self.rows = half  # auto: later batches start at the size that fits
            detail["batch_size"] = half
        self.run.record_event("oom_backoff", detail)


def auto_rows(engine: Engine, units) -> tuple[int, int]:
    """`--batch-size auto`: the rows that fit the longest prompt of the first AUTO_PROBE_RECORDS
    of `units`, and that length."""
    longest = max((engine.prompt_length(u) for u in islice(units, AUTO_PROBE_RECORDS)), default=1)
    return engine.find_batch_size(longest), longest


def choose_batch_size(run: Run, engine: Engine) -> int:
    """`--batch-size`, or for `auto` the largest that fits the longest of the first prompts."""
    cfg = run.cfg
    if cfg.batch_size != "auto":
        return cfg.batch_size
    rows, longest = auto_rows(engine, plan_units(islice(run.records(), AUTO_PROBE_RECORDS), 1, cfg.seed))
    log.info("--batch-size auto: %d rows fit (prompt %d + %d new tokens)", rows, longest, cfg.max_new_tokens)
    run.record_event("batch_size_auto", {"rows": rows, "prompt_tokens": longest})
    return rows


class LocalExecutor:
    """Runs a run's pending units in this process: generate, judge, settle, commit."""

    def execute(self, run: Run, units: Iterator[WorkUnit], engine: Engine | None = None) -> int:
        """Load the engine and generate batch after batch through the commit pipeline; return
        the units committed. Whatever happens, no engine thread is left running, and the
        processes this run started (an engine it loaded, the verdict workers) are closed."""
        cfg = run.cfg
        owned = engine is None  # an engine this run loads, it closes (with its processes, if any)
        checker = pipeline = loaded = None
        if run.policy:  # the workers start while the model loads
            from prefgen.sql.workers import CheckerPool

            checker = CheckerPool(run.policy, cfg.exec_workers)
        try:
            loaded = run.load_engine(engine)
            rows = BatchRows(run, choose_batch_size(run, loaded), cfg.batch_size == "auto")
            overlap = cfg.overlap if cfg.overlap is not None else loaded.overlap_default
            with run.progress() as progress:
                pipeline = CommitPipeline(run, loaded, checker, on_backoff=rows.backoff, on_commit=progress)
                self.loop(run, pipeline, units, rows, overlap)
        except BaseException as exc:
            if pipeline and not (isinstance(exc, Interrupted) and exc.immediate):
                pipeline.wait_quietly()  # a second signal stops at once; otherwise never leave torch running
            raise
        finally:
            if checker:
                checker.close()
            if owned and loaded is not None:
                loaded.close()
        return pipeline.done

    def loop(self, run: Run, pipeline: "CommitPipeline", units: Iterator[WorkUnit], rows: BatchRows, overlap: bool):
        """Batch after batch of the pending units, then of the further attempts their commits
        planned, until none is left. Without overlap, or once a stop is asked for, each batch is
        committed before the next starts."""
        cfg, stop = run.cfg, run.stop
        while True:
            tracked = pipeline.samples.tracked(units)
            prompt_length = pipeline.engine.prompt_length
            for batch in batches(tracked, rows, cfg.max_batch_tokens, cfg.lookahead, prompt_length, cfg.max_new_tokens):
                pipeline.step(batch)
                if not overlap or stop.received is not None:
                    # a stop waits for the batch in flight and commits everything first
                    pipeline.settle(drain=stop.received is not None)
                    stop.check()
            pipeline.settle(drain=True)
            if not pipeline.samples.followups:
                return
            units = iter(())  # only the further attempts the last commits asked for


class CommitPipeline:
    """The batches of one run between generating and committed: the one generating, and the
    judged ones waiting for their execution verdicts, committed in batch order.

    `on_backoff(rows, half)` hears of each out-of-memory backoff, `on_commit(units, added)` of
    each commit: the units it committed and the further attempts it added."""

    def __init__(
        self,
        run: Run,
        engine: Engine,
        checker=None,
        on_backoff: Callable[[int, int], None] = lambda rows, half: None,
        on_commit: Callable[[int, int], None] = lambda units, added: None,
    ):
        self.run, self.cfg, self.engine = run, run.cfg, engine
        self.samples = OpenSamples(run.cfg, run.ledger, run.rule)
        self.checker = checker  # CheckerPool with --db-root
        self.on_backoff, self.on_commit = on_backoff, on_commit
        self.in_flight: tuple[list[WorkUnit], Future] | None = None
        self.waiting: deque = deque()  # judged batches waiting for their verdicts, in order
        self.done = 0  # units committed

    def step(self, batch: list[WorkUnit]) -> None:
        """Start generating `batch`; while it generates, judge the batch before it (and commit
        the judged batches whose verdicts are in)."""
        fault_point("before_generate")
        previous, self.in_flight = self.in_flight, (batch, self.engine.start(batch))
        if previous:
            self.finish(*previous)

    def settle(self, drain: bool = False) -> None:
        """Judge the batch in flight, if any; with `drain`, commit every judged batch."""
        if self.in_flight:
            in_flight, self.in_flight = self.in_flight, None
            self.finish(*in_flight)
        if drain:
            self.commit_ready(backlog=0)

    def finish(self, batch: list[WorkUnit], future: Future) -> None:
        """Wait for a batch's answers, then judge it, and start its SQL executing."""
        answers, backoffs = self.engine.answers(batch, future)
        for rows, half in backoffs:
            self.on_backoff(rows, half)
        judged = judge_batch(batch, answers, self.run.dedup, self.cfg.onpolicy)
        verdicts = [self.submit_check(item) for item in judged] if self.checker else []
        self.waiting.append((judged, verdicts))
        first = window_start(batch[0].sample_index, self.cfg.lookahead)
        # samples of finished windows: keeps memory bounded
        self.run.dedup.forget(lambda s: s >= first or s in self.samples.open)
        self.commit_ready(backlog=VERDICT_BACKLOG)

    def submit_check(self, item: Judged) -> Future | None:
        """Start executing a judged answer's SQL against its database, if it has any to judge."""
        if item.status not in (WRITTEN, CANDIDATE):
            return None
        record = item.unit.record
        return self.checker.submit(record.fields[self.cfg.db_field], record.output, item.sql)

    def commit_ready(self, backlog: int) -> None:
        """Commit, in order, the judged batches whose verdicts are in, waiting for the oldest
        while more than `backlog` batches are waiting."""
        while self.waiting:
            judged, verdicts = self.waiting[0]
            if len(self.waiting) <= backlog and not all(v is None or v.done() for v in verdicts):
                return
            self.waiting.popleft()
            if verdicts:
                judged = [self.with_verdict(item, check) for item, check in zip(judged, verdicts, strict=True)]
            settled = self.samples.settle(judged)
            self.run.commit(settled)
            self.done += len(settled.items)
            self.samples.followups.extend(settled.further)
            self.on_commit(len(settled.items), len(settled.further))

    def with_verdict(self, item: Judged, check: Future | None) -> Judged:
        """The judged answer with its execution verdict, once that is in."""
        if check is None:
            return item
        verdict = self.checker.result(check)
        return with_verdict(item, verdict, self.checker.policy.keeps(verdict))

    def wait_quietly(self) -> None:
        """Let a batch still generating finish (its result is dropped: nothing was committed),
        so that no engine thread is left running at exit."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is not None:
            try:
                in_flight[1].result()
            except BaseException:
                pass
