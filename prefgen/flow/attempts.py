"""Step 2b of the flow: which attempts a sample still needs. One rule, asked at start-up (what
is pending, pending.py) and during the run (after each commit, pipeline.py), so a resumed run
makes exactly the attempts an uninterrupted one makes.

A sample's attempts: the first `num_rejects` are always made; with --max-attempts K above
that, further attempts are made while the sample has fewer than `num_rejects` written rejects
and fewer than K attempts, each wave exactly as many as are still missing. Attempt `a` of a
sample is made if and only if a < num_rejects, or a < K and attempts 0..a-1 wrote fewer than
num_rejects, however the waves were cut (by batches, by a crash): a resumed run makes the same
attempts as an uninterrupted one. With --pairs onpolicy (what counts: the pairs its candidates
can form) waves have a fixed size, num_rejects, and attempt `a` of wave [s, s+num_rejects) is
made if and only if a < K and attempts 0..s-1 formed fewer than num_rejects pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from prefgen.units import GOLD_SUSPECT, RETRIED_STATUSES, RETRY, WRITTEN


def written_count(rows: Iterable[dict]) -> int:
    """What a sample has towards --num-rejects with --pairs gold: its written rejects (and those
    --gold-suspect skip left unwritten: the sample had them)."""
    return sum(row["status"] in (WRITTEN, GOLD_SUSPECT) for row in rows)


@dataclass(frozen=True)
class Need:
    """What a sample still needs: attempts to make (again) first, or the next wave."""

    retry: list[int]  # missing, gaps, oom / error / retry: made (again) before anything else
    further: list[int]  # the next wave (--max-attempts), once nothing is left to retry

    @property
    def attempts(self) -> list[int]:
        """The attempts to make now."""
        return self.retry or self.further

    @property
    def complete(self) -> bool:
        """Whether the sample is done: every attempt resolved and no further wave to make."""
        return not self.retry and not self.further


@dataclass(frozen=True)
class AttemptRule:
    """The rule in this module's docstring, for one run's settings.

    `count` says what a sample's units (ledger rows, in attempt order) give towards
    num_rejects: written rejects, or with --pairs onpolicy the pairs they form; `wave` is the
    fixed wave size (on-policy: num_rejects) or 0 (a wave is what the sample still lacks)."""

    num_rejects: int
    max_attempts: int  # --max-attempts, by default num_rejects
    wave: int = 0
    count: Callable[[list[dict]], int] = written_count

    @property
    def has_further(self) -> bool:
        """Whether a sample may need attempts beyond its first num_rejects."""
        return self.max_attempts > self.num_rejects

    def unresolved(self, statuses: Mapping[int, str]) -> list[int]:
        """Attempts of a sample that must be made (again) before anything else: the first
        `num_rejects` that are missing, gaps, and those in oom / error / retry."""
        recorded = max(statuses, default=-1) + 1
        return [a for a in range(max(self.num_rejects, recorded)) if statuses.get(a, RETRY) in RETRIED_STATUSES]

    def further(self, statuses: Mapping[int, str], have: Callable[[], int]) -> list[int]:
        """The next wave of a sample whose attempts so far are all resolved, within
        --max-attempts: as many as it still lacks (`have()`: what its units give so far).

        With a fixed wave size (on-policy, where one correct answer can complete several pairs
        at once), waves start at num_rejects + i*wave whatever `have` says: a wave cut by a
        crash is finished first, and only a whole wave decides whether another is needed."""
        recorded = max(statuses, default=-1) + 1
        if recorded >= self.max_attempts or self.unresolved(statuses):
            return []
        if self.wave:
            into = (recorded - self.num_rejects) % self.wave
            if not into and have() >= self.num_rejects:
                return []  # a whole wave is done, and the sample has what it needs
            return list(range(recorded, min(recorded + self.wave - into, self.max_attempts)))
        return list(range(recorded, min(recorded + self.num_rejects - have(), self.max_attempts)))

    def need(self, units: Mapping[int, dict]) -> Need:
        """What a sample needs, from its units' rows by attempt (each with its `status`)."""
        statuses = {attempt: row["status"] for attempt, row in units.items()}
        retry = self.unresolved(statuses)
        if retry:
            return Need(retry, [])
        return Need([], self.further(statuses, lambda: self.count([units[a] for a in sorted(units)])))
