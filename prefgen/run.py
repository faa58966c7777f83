"""`prefgen generate`: drive the flow from records to committed units, resumably.

records -> plan -> skip what the ledger has -> batch -> generate (an engine: transformers or
  vLLM, behind prefgen.engines' interface) -> extract/judge -> (with --db-root) execution
  verdicts in worker processes -> (with --pairs onpolicy) pairs of completed samples -> commit

Three things overlap: a batch generates (in the engine's background thread) while the batch
before it is judged and its SQL executed (in worker processes), and batches whose verdicts are
in are committed, always in batch order. The run loop never asks which engine it drives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Iterator

from prefgen.batching import batches, window_start
from prefgen.commit import OutputJournal, unit_row
from prefgen.config import GenerateConfig
from prefgen.errors import Interrupted, OutputError
from prefgen.judge import judge_batch, with_verdict
from prefgen.ledger.store import Ledger
from prefgen.pairing import SamplePairs, candidate_from_row, form_pairs, model_pairs
from prefgen.pending import further_attempts, pending_units, scan_records, unresolved_attempts, written_count
from prefgen.plan import plan_units, shard, unit_seed
from prefgen.records import iter_records, require_string_field
from prefgen.runtime.faults import fault_point
from prefgen.runtime.lock import exclusive
from prefgen.units import CANDIDATE, RETRIED_STATUSES, WRITTEN, WorkUnit

log = logging.getLogger("prefgen")

AUTO_PROBE_RECORDS = 64  # --batch-size auto sizes batches for the longest of the first records
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
VERDICT_BACKLOG = 2  # batches judged but waiting for execution verdicts before we wait for them


@dataclass
class Summary:
    """What a generate call did."""

    total_units: int
    done_before: int
    done_now: int
    counts: dict[str, int]
    output: Path
    ledger: Path

    @property
    def finished(self) -> bool:
        return self.done_before + self.done_now >= self.total_units and not any(
            self.counts.get(s) for s in RETRIED_STATUSES
        )


def check_writable(path: Path, what: str) -> None:
    """Refuse, before anything is touched, a path prefgen could not write."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory", hint=f"give {what} a file path")
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: its directory does not exist", hint=f"create {parent} first")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what} {path} is not writable", hint="check the permissions")


class StopSignals:
    """SIGINT/SIGTERM: the first asks to stop after the batch in flight is committed; a
    second stops at once (the commit protocol keeps that safe too)."""

    def __init__(self):
        self.received: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        for signum in EXIT_CODES:
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            raise Interrupted(f"stopped at once by a second {name}", exit_code=EXIT_CODES[signum], immediate=True)
        self.received = signum
        log.warning("%s received: stopping after the batch in flight is committed (again to stop now)", name)

    def check(self) -> None:
        if self.received is not None:
            name = signal.Signals(self.received).name
            raise Interrupted(f"stopped by {name} after committing", exit_code=EXIT_CODES[self.received])


@contextlib.contextmanager
def progress_bar(total: int, initial: int, enabled: bool) -> Iterator:
    from tqdm import tqdm

    with tqdm(
        total=total,
        initial=initial,
        unit="unit",
        desc="generate",
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.05,
    ) as bar:
        yield bar


def generate(cfg: GenerateConfig, argv: list[str], show_progress: bool = True, engine=None) -> Summary:
    """Run (or resume) generation as `cfg` asks. Library errors are PrefgenError subclasses.

    `engine` is an already loaded Engine to use instead of loading the model (benchmarks).
    """
    output, ledger_path = cfg.output_path, cfg.ledger_path
    check_writable(output, "--output")
    check_writable(ledger_path, "--ledger")
    with exclusive(output), exclusive(ledger_path), StopSignals() as stop:
        ledger = Ledger(ledger_path)
        try:
            fault_point("after_ledger_open")
            return GenerateRun(cfg, ledger, stop, show_progress).execute(argv, engine)
        finally:
            ledger.close()


class GenerateRun:
    """One process's run over its ledger: reconcile, plan, then generate batch after batch."""

    def __init__(self, cfg: GenerateConfig, ledger: Ledger, stop: StopSignals, show_progress: bool):
        self.cfg, self.ledger, self.stop, self.show_progress = cfg, ledger, stop, show_progress
        self.journal = OutputJournal(ledger, cfg.output_path, cfg.db_field)
        self.policy = cfg.check_policy()
        self.checker = None  # CheckerPool with --db-root
        self.run_id = 0
        self.batch_limit = 1
        self.overlap = False
        self.engine = None
        self.kept: dict[int, set[str]] = {}  # sample -> its candidates' SQL, for --dedup-rejects
        self.waiting: deque = deque()  # judged batches waiting for their verdicts, in order
        self.open_samples: dict[int, list] = {}  # --max-attempts: sample -> [record, units in flight]
        self.followups: deque[WorkUnit] = deque()  # --max-attempts: further attempts to make

    def records(self):
        cfg = self.cfg
        records = shard(iter_records(cfg.sft_data, cfg.max_samples), cfg.rank, cfg.world_size)
        if self.policy:
            hint = "--db-field names the field holding the database id"
            records = require_string_field(records, cfg.db_field, cfg.sft_data, hint)
        return records

    def counts(self) -> dict[str, int]:
        return self.ledger.status_counts(max_sample=self.cfg.max_samples or None)

    def pending(self) -> Iterator[WorkUnit]:
        """The units still to generate; fills self.kept (for --dedup-rejects) as it goes."""
        cfg = self.cfg
        return pending_units(
            self.records(),
            self.ledger,
            cfg.num_rejects,
            cfg.seed,
            self.kept,
            cfg.dedup_rejects,
            cfg.attempts,
            self.kept_count,
            self.wave,
        )

    @property
    def wave(self) -> int:
        """On-policy: further attempts in waves of --num-rejects (see resume.further_attempts)."""
        return self.cfg.num_rejects if self.cfg.onpolicy else 0

    def kept_count(self, rows: list[dict]) -> int:
        """What a sample's units give towards --num-rejects: written rejects, or on-policy pairs."""
        if self.cfg.onpolicy:
            return model_pairs([candidate_from_row(row) for row in rows], self.cfg.num_rejects)
        return written_count(rows)

    def execute(self, argv: list[str], engine=None) -> Summary:
        cfg, ledger = self.cfg, self.ledger
        ledger.check_fingerprint(cfg.fingerprint())
        if self.policy:
            self.policy.check()
        self.journal.open()
        try:
            samples = scan_records(self.records(), ledger)
            meta = {
                "samples_total": str(samples),
                "num_rejects": str(cfg.num_rejects),
                "max_attempts": str(cfg.attempts),
            }
            with ledger.db.atomic():
                ledger.set_meta(meta)
            counts = self.counts()
            done_before = sum(n for status, n in counts.items() if status not in RETRIED_STATUSES)
            total = samples * cfg.num_rejects + ledger.further_attempts(cfg.num_rejects, cfg.max_samples or None)
            summary = Summary(total, done_before, 0, counts, cfg.output_path, cfg.ledger_path)
            units = self.pending()  # one pass: its first unit tells whether there is work
            first = next(units, None)
            if first is None:
                return summary
            self.run_id = ledger.start_run(cfg.settings(), argv)
            try:
                summary.done_now = self.run_batches(summary, chain([first], units), engine)
            except Interrupted as exc:
                ledger.end_run(self.run_id, "interrupted", reason=str(exc))
                raise
            except BaseException as exc:
                ledger.end_run(self.run_id, "failed", reason=type(exc).__name__, error=str(exc))
                raise
            ledger.end_run(self.run_id, "finished")
            summary.counts = self.counts()
            return summary
        finally:
            self.journal.close()

    def load(self, engine=None):
        if engine is None:
            from prefgen.engines import load_engine

            engine = load_engine(self.cfg)
        self.ledger.record_event(
            self.run_id,
            "model_loaded",
            {"engine": self.cfg.engine, "device": engine.device, "adapter_merged": engine.adapter_merged},
        )
        fault_point("after_model_load")
        self.stop.check()
        return engine

    def on_backoff(self, rows: int, half: int) -> None:
        log.warning("out of memory with %d rows: retrying as batches of %d", rows, half)
        detail = {"rows": rows, "retry_rows": half}
        if self.cfg.batch_size == "auto" and half < self.batch_limit:
            self.batch_limit = half  # auto: later batches start at the size that fits
            detail["batch_size"] = half
        self.ledger.record_event(self.run_id, "oom_backoff", detail)

    def choose_batch_size(self, engine) -> int:
        """`--batch-size`, or for `auto` the largest that fits the longest of the first prompts."""
        if self.cfg.batch_size != "auto":
            return self.cfg.batch_size
        first = plan_units(islice(self.records(), AUTO_PROBE_RECORDS), 1, self.cfg.seed)
        longest = max((engine.prompt_length(u) for u in first), default=1)
        rows = engine.find_batch_size(longest)
        log.info("--batch-size auto: %d rows fit (prompt %d + %d new tokens)", rows, longest, self.cfg.max_new_tokens)
        self.ledger.record_event(self.run_id, "batch_size_auto", {"rows": rows, "prompt_tokens": longest})
        return rows

    def run_batches(self, summary: Summary, units: Iterator[WorkUnit], engine=None) -> int:
        """Generate batch after batch; while one batch generates (in a background thread), the
        previous one is judged, checked and committed here, in order."""
        cfg = self.cfg
        self.summary = summary
        self.done, self.in_flight = 0, None
        owned = engine is None  # an engine this run loads, it closes (with its processes, if any)
        if self.policy:  # the workers start while the model loads
            from prefgen.sql.workers import CheckerPool

            self.checker = CheckerPool(self.policy, cfg.exec_workers)
        try:
            self.engine = engine = self.load(engine)
            self.batch_limit = self.choose_batch_size(engine)
            self.overlap = cfg.overlap if cfg.overlap is not None else engine.overlap_default
            with progress_bar(summary.total_units, summary.done_before, self.show_progress) as self.bar:
                while True:
                    for batch in batches(
                        self.tracked(units),
                        lambda: self.batch_limit,
                        cfg.max_batch_tokens,
                        cfg.lookahead,
                        engine.prompt_length,
                        cfg.max_new_tokens,
                    ):
                        self.step(engine, batch)
                    self.settle(drain=True)
                    if not self.followups:
                        break
                    units = iter(())  # only the further attempts the last commits asked for
        except Interrupted as exc:
            if not exc.immediate:
                wait_quietly(self.in_flight)
            raise
        except BaseException:
            wait_quietly(self.in_flight)  # never leave torch running in a thread at exit
            raise
        finally:
            if self.checker:
                self.checker.close()
            if owned and self.engine is not None:
                self.engine.close()
        return self.done

    def tracked(self, units):
        """The pending units, with further attempts (--max-attempts) slipped in as they are
        planned; counts each sample's units in flight."""
        track = self.cfg.attempts > self.cfg.num_rejects
        for unit in units:
            while self.followups:
                yield self.followups.popleft()
            if track:
                self.open_samples.setdefault(unit.sample_index, [unit.record, 0])[1] += 1
            yield unit
        while self.followups:
            yield self.followups.popleft()

    def step(self, engine, batch: list) -> None:
        """Start generating `batch`; while it generates, judge and commit the batch before it."""
        fault_point("before_generate")
        previous, self.in_flight = self.in_flight, (batch, engine.start(batch))
        if previous:
            self.finish(*previous)
        if not self.overlap or self.stop.received is not None:
            # a stop waits for the batch in flight and commits everything first
            self.settle(drain=self.stop.received is not None)
            self.stop.check()

    def settle(self, drain: bool = False) -> None:
        """Judge the batch in flight, if any; with `drain`, commit every judged batch."""
        if self.in_flight:
            in_flight, self.in_flight = self.in_flight, None
            self.finish(*in_flight)
        if drain:
            self.commit_ready(backlog=0)

    def finish(self, batch: list, future: Future) -> None:
        """Wait for a batch's answers, then judge it, and start its SQL executing."""
        answers, backoffs = self.engine.answers(batch, future)
        for count, half in backoffs:
            self.on_backoff(count, half)
        judged = judge_batch(batch, answers, self.kept, self.cfg.dedup_rejects, self.cfg.onpolicy)
        verdicts = [self.submit_check(item) for item in judged] if self.checker else []
        self.waiting.append((judged, verdicts))
        first = window_start(batch[0].sample_index, self.cfg.lookahead)
        for sample in [s for s in self.kept if s < first and s not in self.open_samples]:
            del self.kept[sample]  # samples of finished windows: keeps memory bounded
        self.commit_ready(backlog=VERDICT_BACKLOG)

    def submit_check(self, item) -> Future | None:
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
            paired, further = self.settle_samples(judged)
            self.journal.commit(self.run_id, judged, paired)
            self.done += len(judged)
            self.bar.update(len(judged))
            if further:
                self.followups.extend(further)
                self.summary.total_units += len(further)
                self.bar.total += len(further)
                self.bar.refresh()

    def with_verdict(self, item, check: Future | None):
        if check is None:
            return item
        verdict = self.checker.result(check)
        return with_verdict(item, verdict, self.policy.keeps(verdict))

    def settle_samples(self, judged: list) -> tuple[list[SamplePairs], list[WorkUnit]]:
        """For each sample whose units in flight this batch completes, from its units in the
        ledger and in this batch: with --pairs onpolicy, its pairs once it needs no further
        attempt; with --max-attempts, the next wave of attempts it needs."""
        cfg = self.cfg
        track = cfg.attempts > cfg.num_rejects
        if not (track or cfg.onpolicy):
            return [], []
        batch: dict[int, list] = {}
        for item in judged:
            batch.setdefault(item.unit.sample_index, [item.unit.record]).append(unit_row(item))
        paired, further = [], []
        for sample, (record, *rows) in batch.items():
            if track:
                entry = self.open_samples.get(sample)
                if entry is None:
                    continue
                entry[1] -= len(rows)
                if entry[1]:
                    continue  # more of its units are in flight
            units = {row["reject_index"]: row for row in self.ledger.sample_units(sample)}
            units.update((row["reject_index"], row) for row in rows)
            statuses = {attempt: row["status"] for attempt, row in units.items()}
            if unresolved_attempts(statuses, cfg.num_rejects):
                self.open_samples.pop(sample, None)  # oom / error: the next run retries them
                continue
            rows = [units[attempt] for attempt in sorted(units)]
            todo = further_attempts(statuses, cfg.num_rejects, cfg.attempts, self.kept_count(rows), self.wave)
            if todo:
                self.open_samples[sample] = [record, len(todo)]
                further += [WorkUnit(record, a, unit_seed(cfg.seed, sample, a)) for a in todo]
                continue
            self.open_samples.pop(sample, None)
            if cfg.onpolicy:
                paired.append(self.pairs_of(record, rows))
        return paired, further

    def pairs_of(self, record, rows: list[dict]) -> SamplePairs:
        cfg = self.cfg
        candidates = [candidate_from_row(row) for row in rows if row["status"] == CANDIDATE]
        pairs = form_pairs(candidates, cfg.num_rejects, cfg.answer, cfg.fallback, record.output)
        return SamplePairs(record, pairs, candidates, cfg.answer)


def wait_quietly(in_flight) -> None:
    """Let a batch still generating finish (its result is dropped: nothing was committed)."""
    if in_flight is not None:
        try:
            in_flight[1].result()
        except BaseException:
            pass
