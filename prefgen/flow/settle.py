"""Step 7d of the flow: settle a sample once its units in flight are judged.

Three things are decided per sample, each by its own helper: the further attempts it still
needs (`further_attempts`, attempts.py's rule, the one pending.py asks at start-up), its gold
check (`check_gold`, suspects.py) and, with --pairs onpolicy, its pairs (`sample_pairs`).
`OpenSamples` counts each sample's units in flight, so that a sample is settled when its last
one is judged, whatever executor feeds it batches.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Iterable, Iterator

from prefgen.config import LENIENT, GenerateConfig
from prefgen.flow.attempts import AttemptRule, Need
from prefgen.flow.commit import unit_row
from prefgen.flow.pairing import SamplePairs, candidate_from_row, form_pairs, model_pairs
from prefgen.flow.plan import attempt_units
from prefgen.flow.suspects import gold_check
from prefgen.ledger.store import Ledger
from prefgen.units import CANDIDATE, GOLD_SUSPECT, WRITTEN, Judged, Record, WorkUnit


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


def further_attempts(rule: AttemptRule, units: dict[int, dict]) -> Need:
    """What a sample whose units are all judged still needs (rows by attempt)."""
    return rule.need(units)


def check_gold(cfg: GenerateConfig, rows: list[dict]) -> tuple[str | None, bool]:
    """A settled sample's gold check: (suspect detail, "" for sound, None when not checked; skip)."""
    return gold_check(rows, cfg.gold_suspect if cfg.checks_gold else "", cfg.suspect_share)


def sample_pairs(cfg: GenerateConfig, record: Record, rows: list[dict], suspect: str | None, skip: bool) -> SamplePairs:
    """The on-policy pairs of a sample that needs nothing more, from its units' rows (none when
    its gold check says skip)."""
    candidates = [candidate_from_row(row) for row in rows if row["status"] == CANDIDATE]
    pairs = [] if skip else form_pairs(candidates, cfg.num_rejects, cfg.answer, cfg.fallback, record.output)
    scored = cfg.evaluator != LENIENT
    return SamplePairs(record, pairs, candidates, cfg.answer, scored=scored, suspect=suspect, skipped=skip)


def flagged(item: Judged, suspect: str | None, skip: bool) -> Judged:
    """A gold-mode unit with its sample's gold check: under --gold-suspect skip, a reject of a
    suspect gold is not written."""
    if suspect is None:
        return item
    if skip and item.status == WRITTEN:
        return replace(item, status=GOLD_SUSPECT, detail=suspect, suspect=suspect)
    return replace(item, suspect=suspect)


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
        """Settle each sample whose units in flight this batch completes (from its units in the
        ledger, held back and in this batch). Returns what to commit now, in batch order."""
        if not (self.tracks or self.cfg.onpolicy):
            return Settled(judged)
        batch: dict[int, list] = {}
        for item in judged:
            batch.setdefault(item.unit.sample_index, [item.unit.record]).append(item)
        settled = Settled([])
        for sample, (record, *items) in batch.items():
            if self.in_flight(settled, sample, items):
                continue
            self.complete(settled, record, self.held.pop(sample, []), items)
        return settled

    def in_flight(self, settled: Settled, sample: int, items: list[Judged]) -> bool:
        """Count a tracked sample's units judged; True (and the units held or passed on) while
        more of them are in flight."""
        if not self.tracks:
            return False
        entry = self.open.get(sample)
        if entry is None:  # not tracked: a unit of a sample settled before
            settled.items += items
            return True
        entry[1] -= len(items)
        if entry[1]:
            self._wait(settled, sample, items)
            return True
        return False

    def complete(self, settled: Settled, record: Record, held: list[Judged], items: list[Judged]) -> None:
        """A sample with no unit in flight: its next wave of attempts, or its gold check and pairs."""
        sample = record.index
        units = {row["reject_index"]: row for row in self.ledger.sample_units(sample)}
        units.update((item.unit.reject_index, unit_row(item)) for item in held + items)
        need = further_attempts(self.rule, units)
        if need.further and not need.retry:
            self.open[sample] = [record, len(need.further)]
            settled.further += attempt_units(record, need.further, self.cfg.seed)
            self._wait(settled, sample, held + items)
            return
        self.open.pop(sample, None)  # complete, or with oom / error units the next run retries
        rows = [units[attempt] for attempt in sorted(units)]
        suspect, skip = check_gold(self.cfg, rows)
        if self.cfg.onpolicy:
            settled.items += items
            if not need.retry:  # else paired once the next run has its missing answers
                settled.paired.append(sample_pairs(self.cfg, record, rows, suspect, skip))
        else:
            settled.items += [flagged(item, suspect, skip) for item in held + items]
            if skip:  # settled with no pair (sample_progress reads it)
                settled.paired.append(SamplePairs(record, [], [], suspect=suspect, skipped=True))
        if suspect is not None and not (self.cfg.onpolicy and need.retry):
            settled.checked.append(gold_check_row(record, suspect))

    def _wait(self, settled: Settled, sample: int, items: list[Judged]) -> None:
        """Hold a sample's judged units back until it is complete (gold checked), or commit them."""
        if self.hold:
            self.held.setdefault(sample, []).extend(items)
        else:
            settled.items += items
