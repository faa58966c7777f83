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
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterable, Iterator

from prefgen.flow.attempts import AttemptRule
from prefgen.flow.batching import window_start
from prefgen.flow.commit import OutputJournal, unit_row
from prefgen.config import LENIENT, GenerateConfig
from prefgen.engines.base import Engine
from prefgen.flow.judge import judge_batch, with_verdict
from prefgen.ledger.store import Ledger
from prefgen.flow.pairing import SamplePairs, candidate_from_row, form_pairs, model_pairs
from prefgen.flow.plan import attempt_units
from prefgen.runtime.faults import fault_point
from prefgen.flow.suspects import gold_check
from prefgen.units import CANDIDATE, GOLD_SUSPECT, WRITTEN, Judged, Record, WorkUnit

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
    ones a commit completes still need, to be generated next.

    With --db-root and --pairs gold the gold of each sample is checked once all its answers are
    judged (suspects.py), and every line carries the outcome: so the units of a sample are held
    back, uncommitted, until its last one is judged, and committed together (a crash meanwhile
    loses only uncommitted units: they are generated again, with the same seeds)."""

    def __init__(self, cfg: GenerateConfig, ledger: Ledger, rule: AttemptRule):
        self.cfg, self.ledger, self.rule = cfg, ledger, rule
        self.hold = cfg.checks_gold and not cfg.onpolicy
        self.open: dict[int, list] = {}  # tracked: sample -> [record, units in flight]
        self.held: dict[int, list[Judged]] = {}  # gold checked: sample -> its judged units not committed yet
        self.followups: deque[WorkUnit] = deque()  # --max-attempts: further attempts to make

    @property
    def tracks(self) -> bool:
        """Whether the units in flight are counted per sample (to know when one is complete)."""
        return self.rule.has_further or self.hold

    def tracked(self, units: Iterable[WorkUnit]) -> Iterator[WorkUnit]:
        """The pending units, with further attempts slipped in as they are planned; counts each
        sample's units in flight."""
        track = self.tracks
        for unit in units:
            while self.followups:
                yield self.followups.popleft()
            if track:
                self.open.setdefault(unit.sample_index, [unit.record, 0])[1] += 1
            yield unit
        while self.followups:
            yield self.followups.popleft()

    def settle(self, judged: list[Judged]) -> Settled:
        """For each sample whose units in flight this batch completes, from its units in the
        ledger, held back and in this batch: with --pairs onpolicy, its pairs once it needs no
        further attempt; with --max-attempts, the next wave of attempts it needs; with the gold
        checked, whether it is suspect. Returns what to commit now, in batch order."""
        if not (self.tracks or self.cfg.onpolicy):
            return Settled(judged)
        batch: dict[int, list] = {}
        for item in judged:
            batch.setdefault(item.unit.sample_index, [item.unit.record]).append(item)
        settled = Settled([])
        for sample, (record, *items) in batch.items():
            if self.tracks:
                entry = self.open.get(sample)
                if entry is None:
                    settled.items += items
                    continue
                entry[1] -= len(items)
                if entry[1]:
                    self._wait(settled, sample, items)  # more of its units are in flight
                    continue
            held = self.held.pop(sample, [])
            units = {row["reject_index"]: row for row in self.ledger.sample_units(sample)}
            units.update((item.unit.reject_index, unit_row(item)) for item in held + items)
            need = self.rule.need(units)
            if need.further and not need.retry:
                self.open[sample] = [record, len(need.further)]
                settled.further += attempt_units(record, need.further, self.cfg.seed)
                self._wait(settled, sample, held + items)
                continue
            self.open.pop(sample, None)  # complete, or with oom / error units the next run retries
            rows = [units[attempt] for attempt in sorted(units)]
            mode = self.cfg.gold_suspect if self.cfg.checks_gold else ""
            suspect, skip = gold_check(rows, mode, self.cfg.suspect_share)
            if self.cfg.onpolicy:
                settled.items += items
                if need.retry:
                    continue  # paired once the next run has its missing answers
                settled.paired.append(self.pairs_of(record, rows, suspect, skip))
            else:
                settled.items += [self.flagged(item, suspect, skip) for item in held + items]
                if skip:  # settled with no pair (sample_progress reads it)
                    settled.paired.append(SamplePairs(record, [], [], suspect=suspect, skipped=True))
            if suspect is not None:
                settled.checked.append(gold_check_row(record, suspect))
        return settled

    def _wait(self, settled: "Settled", sample: int, items: list[Judged]) -> None:
        """Hold a sample's judged units back until it is complete (gold checked), or commit them."""
        if self.hold:
            self.held.setdefault(sample, []).extend(items)
        else:
            settled.items += items

    def flagged(self, item: Judged, suspect: str | None, skip: bool) -> Judged:
        """A gold-mode unit with its sample's gold check: under --gold-suspect skip, a reject of a
        suspect gold is not written."""
        if suspect is None:
            return item
        if skip and item.status == WRITTEN:
            return replace(item, status=GOLD_SUSPECT, detail=suspect, suspect=suspect)
        return replace(item, suspect=suspect)

    def pairs_of(self, record: Record, rows: list[dict], suspect: str | None, skip: bool) -> SamplePairs:
        """The pairs of a sample that needs nothing more, from its units' rows (none when its
        gold check says skip)."""
        cfg = self.cfg
        candidates = [candidate_from_row(row) for row in rows if row["status"] == CANDIDATE]
        pairs = [] if skip else form_pairs(candidates, cfg.num_rejects, cfg.answer, cfg.fallback, record.output)
        scored = cfg.evaluator != LENIENT
        return SamplePairs(record, pairs, candidates, cfg.answer, scored=scored, suspect=suspect, skipped=skip)


def gold_check_row(record: Record, suspect: str) -> dict:
    """The ledger's gold check of a sample (its `samples` row's columns)."""
    return {"sample_index": record.index, "gold_suspect": int(bool(suspect)), "suspect_detail": suspect or None}


@dataclass
class Settled:
    """What a commit writes: the units ready (in batch order), the on-policy samples it pairs,
    the gold checks of gold-mode samples it completes, and the further attempts to make."""

    items: list[Judged]
    paired: list[SamplePairs] = field(default_factory=list)
    checked: list[dict] = field(default_factory=list)
    further: list[WorkUnit] = field(default_factory=list)


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
            settled = self.samples.settle(judged)
            self.journal.commit(self.run_id, settled.items, settled.paired, settled.checked)
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
