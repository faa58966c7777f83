"""Step 8a of the flow: batches in flight, from generating to committed.

Three things overlap: a batch generates (in the engine's background thread) while the batch
before it is judged and its SQL executed (in worker processes), and batches whose verdicts are
in are committed, always in batch order. Each commit also settles the samples it completes
(attempts.py's rule, the one pending.py asks at start-up): with --max-attempts the further
attempts they need join the units still to generate; with --pairs onpolicy, once a sample
needs nothing more, its pairs are committed with it.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from functools import partial
from typing import Callable, Iterable, Iterator

from prefgen.attempts import AttemptRule
from prefgen.batching import window_start
from prefgen.commit import OutputJournal, unit_row
from prefgen.config import LENIENT, GenerateConfig
from prefgen.engines.base import Engine
from prefgen.judge import judge_batch, with_verdict
from prefgen.ledger.store import Ledger
from prefgen.pairing import SamplePairs, candidate_from_row, form_pairs, model_pairs
from prefgen.plan import attempt_units
from prefgen.runtime.faults import fault_point
from prefgen.units import CANDIDATE, WRITTEN, Judged, Record, WorkUnit

VERDICT_BACKLOG = 2  # batches judged but waiting for execution verdicts before we wait for them


def onpolicy_count(num_rejects: int, rows: list[dict]) -> int:
    """What a sample's units give towards --num-rejects with --pairs onpolicy: the pairs the
    model's own answers already form."""
    return model_pairs([candidate_from_row(row) for row in rows], num_rejects)


def attempt_rule(cfg: GenerateConfig) -> AttemptRule:
    """The attempts rule of a run's settings: with --pairs onpolicy, what counts is the pairs a
    sample's candidates form, and further attempts come in waves of --num-rejects."""
    if cfg.onpolicy:
        return AttemptRule(cfg.num_rejects, cfg.attempts, cfg.num_rejects, partial(onpolicy_count, cfg.num_rejects))
    return AttemptRule(cfg.num_rejects, cfg.attempts)


class OpenSamples:
    """The samples whose units are in flight, and the further attempts (--max-attempts) the
    ones a commit completes still need, to be generated next."""

    def __init__(self, cfg: GenerateConfig, ledger: Ledger, rule: AttemptRule):
        self.cfg, self.ledger, self.rule = cfg, ledger, rule
        self.open: dict[int, list] = {}  # --max-attempts: sample -> [record, units in flight]
        self.followups: deque[WorkUnit] = deque()  # --max-attempts: further attempts to make

    def tracked(self, units: Iterable[WorkUnit]) -> Iterator[WorkUnit]:
        """The pending units, with further attempts slipped in as they are planned; counts each
        sample's units in flight."""
        track = self.rule.has_further
        for unit in units:
            while self.followups:
                yield self.followups.popleft()
            if track:
                self.open.setdefault(unit.sample_index, [unit.record, 0])[1] += 1
            yield unit
        while self.followups:
            yield self.followups.popleft()

    def settle(self, judged: list[Judged]) -> tuple[list[SamplePairs], list[WorkUnit]]:
        """For each sample whose units in flight this batch completes, from its units in the
        ledger and in this batch: with --pairs onpolicy, its pairs once it needs no further
        attempt; with --max-attempts, the next wave of attempts it needs."""
        track = self.rule.has_further
        if not (track or self.cfg.onpolicy):
            return [], []
        batch: dict[int, list] = {}
        for item in judged:
            batch.setdefault(item.unit.sample_index, [item.unit.record]).append(unit_row(item))
        paired, further = [], []
        for sample, (record, *rows) in batch.items():
            if track:
                entry = self.open.get(sample)
                if entry is None:
                    continue
                entry[1] -= len(rows)
                if entry[1]:
                    continue  # more of its units are in flight
            units = {row["reject_index"]: row for row in self.ledger.sample_units(sample)}
            units.update((row["reject_index"], row) for row in rows)
            need = self.rule.need(units)
            if need.retry:
                self.open.pop(sample, None)  # oom / error: the next run retries them
                continue
            if need.further:
                self.open[sample] = [record, len(need.further)]
                further += attempt_units(record, need.further, self.cfg.seed)
                continue
            self.open.pop(sample, None)
            if self.cfg.onpolicy:
                paired.append(self.pairs_of(record, [units[attempt] for attempt in sorted(units)]))
        return paired, further

    def pairs_of(self, record: Record, rows: list[dict]) -> SamplePairs:
        """The pairs of a sample that needs nothing more, from its units' rows."""
        cfg = self.cfg
        candidates = [candidate_from_row(row) for row in rows if row["status"] == CANDIDATE]
        pairs = form_pairs(candidates, cfg.num_rejects, cfg.answer, cfg.fallback, record.output)
        return SamplePairs(record, pairs, candidates, cfg.answer, scored=cfg.evaluator != LENIENT)


class CommitPipeline:
    """The batches of one run between generating and committed: the one generating, and the
    judged ones waiting for their execution verdicts, committed in batch order.

    `on_backoff(rows, half)` hears of each out-of-memory backoff, `on_commit(units, added)` of
    each commit: the units it committed and the further attempts it added."""

    def __init__(
        self,
        cfg: GenerateConfig,
        engine: Engine,
        journal: OutputJournal,
        run_id: int,
        samples: OpenSamples,
        kept: dict[int, set[str]],
        checker=None,
        on_backoff: Callable[[int, int], None] = lambda rows, half: None,
        on_commit: Callable[[int, int], None] = lambda units, added: None,
    ):
        self.cfg, self.engine, self.journal, self.run_id = cfg, engine, journal, run_id
        self.samples, self.kept = samples, kept  # kept: sample -> its candidates' SQL, for --dedup-rejects
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
        judged = judge_batch(batch, answers, self.kept, self.cfg.dedup_rejects, self.cfg.onpolicy)
        verdicts = [self.submit_check(item) for item in judged] if self.checker else []
        self.waiting.append((judged, verdicts))
        first = window_start(batch[0].sample_index, self.cfg.lookahead)
        for sample in [s for s in self.kept if s < first and s not in self.samples.open]:
            del self.kept[sample]  # samples of finished windows: keeps memory bounded
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
            paired, further = self.samples.settle(judged)
            self.journal.commit(self.run_id, judged, paired)
            self.done += len(judged)
            self.samples.followups.extend(further)
            self.on_commit(len(judged), len(further))

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
