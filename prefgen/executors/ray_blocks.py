"""The driver's scheduler: pending units cut into blocks of whole samples, handed to free
workers, judged, settled and committed in block order.

A block is a task at first (its units), then further tasks for the further attempts its samples
need (--max-attempts), each going first in the queue. A block is committed, with prefgen's own
commit step, once no task of it is left and every block before it is committed: the output is
in (sample, reject) order, and a driver killed loses only uncommitted blocks. A task whose
worker (or node) is lost goes back to the front of the queue; a try is counted against the task
the worker was generating only (the first of those sent to it), not the one queued behind it.
At most LIMIT_PER_WORKER blocks per ready worker are open (queued, in flight or waiting to
commit): memory stays bounded.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import groupby
from typing import Callable, Iterable, Iterator

import ray

import prefgen.executors.ray_flow as flow
from prefgen.errors import CheckError, PrefgenError
from prefgen.executors.ray_pool import LOST, WorkerPool
from prefgen.executors.ray_workers import judge_block
from prefgen.flow.run import Run
from prefgen.units import WorkUnit

log = logging.getLogger("prefgen")

LIMIT_PER_WORKER = 3
MAX_TRIES = 4  # a task lost this often (each time with its worker) stops the run
PULSE_S = 1.0  # the loop looks at signals and due replacements this often
IDLE_NOTICE_S = 60.0


def cut_blocks(units: Iterable[WorkUnit], size: int) -> Iterator[list[WorkUnit]]:
    """Blocks of about `size` units, each of whole samples, in (sample, reject) order."""
    block: list[WorkUnit] = []
    for _, group in groupby(units, key=lambda unit: unit.sample_index):
        group = list(group)
        if block and len(block) + len(group) > size:
            yield block
            block = []
        block += group
    if block:
        yield block


@dataclass(eq=False)
class Block:
    index: int
    samples: set[int]
    tasks: int = 1  # tasks of it queued, generating or judging
    added: int = 0  # further attempts its samples asked for
    items: list = field(default_factory=list)
    paired: list = field(default_factory=list)
    checked: list = field(default_factory=list)


@dataclass(eq=False)
class Task:
    block: Block
    units: list[WorkUnit]
    tries: int = 0


class Scheduler:
    """One Ray run's loop over its blocks (see the module's docstring). `advance(units, added)`
    hears of each commit (Run.progress)."""

    def __init__(self, run: Run, pool: WorkerPool, units: Iterable[WorkUnit], advance: Callable[[int, int], None]):
        self.run, self.cfg, self.pool, self.advance = run, run.cfg, pool, advance
        self.policy = run.policy
        self.source = cut_blocks(units, run.cfg.block_size)
        self.samples = flow.Samples(run)
        self.blocks: deque[Block] = deque()  # open, in order
        self.queue: deque[Task] = deque()
        self.generating: dict = {}  # ref -> (actor, task)
        self.sent: dict = {}  # actor -> its tasks not answered yet, in the order sent (the first generates)
        self.culprits: dict = {}  # a lost actor -> the task it was generating when it died
        self.judging: dict = {}  # ref -> (task, answers)
        self.exhausted = False
        self.stopping = False
        self.done = 0
        self.cut = 0
        self.busy = 0.0  # seconds the driver spent on answers, judging, settling and commits

    def execute(self) -> int:
        """Run until every block is committed (or a stop asked for is honoured); the units committed."""
        idle_since = time.monotonic()
        while True:
            self.pool.tick()
            if self.run.stop.received is not None:
                self.stopping = True
            if not self.stopping:
                self.fill()
                self.dispatch()
            in_flight = len(self.generating) + len(self.judging)
            if not in_flight and (self.stopping or (self.exhausted and not self.blocks)):
                break
            refs = [*self.generating, *self.judging, *self.pool.refs]
            ready = ray.wait(refs, num_returns=1, timeout=PULSE_S)[0] if refs else time.sleep(PULSE_S) or []
            started = time.perf_counter()
            for ref in ready:
                self.handle(ref)
            self.commit_ready()
            self.busy += time.perf_counter() - started
            if in_flight or ready:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_NOTICE_S:
                log.warning("no engine worker is ready: waiting for the cluster; %s", self.pool.shortage())
                idle_since = time.monotonic()
        self.commit_ready()
        # what the driver's own work costs: its capacity, units per busy second, for sizing a cluster
        self.run.record_event("ray_driver", {"busy_s": round(self.busy, 3), "units": self.done, "blocks": self.cut})
        self.run.stop.check()
        return self.done

    def fill(self) -> None:
        """Open blocks while fewer than LIMIT_PER_WORKER per ready worker are open."""
        limit = LIMIT_PER_WORKER * max(1, len(self.pool.ready))
        while not self.exhausted and len(self.blocks) < limit:
            units = next(self.source, None)
            if units is None:
                self.exhausted = True
                return
            block = Block(self.cut, {unit.sample_index for unit in units})
            self.cut += 1
            self.samples.track(units)
            self.blocks.append(block)
            self.queue.append(Task(block, units))

    def dispatch(self) -> None:
        while self.queue and (actor := self.pool.take()) is not None:
            task = self.queue.popleft()
            self.generating[actor.generate.remote(task.units)] = (actor, task)
            self.sent.setdefault(actor, []).append(task)

    def handle(self, ref) -> None:
        if ref in self.generating:
            self.generated(ref)
        elif ref in self.judging:
            self.judged(ref)
        else:
            self.pool.started(ref)

    def generated(self, ref) -> None:
        actor, task = self.generating.pop(ref)
        try:
            answers, backoffs, rows = ray.get(ref)
        except LOST as exc:
            # its first task not answered was generating (an ObjectLostError on one that finished
            # but whose result died with the node counts that one: rare, and only a try)
            culprit = self.culprits.setdefault(actor, self.sent[actor][0])
            self.answered(actor, task)
            self.pool.lost(actor, exc, f"generating block {culprit.block.index}")
            self.retry(task, exc, counted=task is culprit)
            return
        self.answered(actor, task)
        self.pool.free(actor)
        if not self.stopping:
            self.dispatch()  # the worker takes its next block before this one is judged and committed
        for count, half in backoffs:
            log.warning("out of memory with %d rows: retrying as batches of %d", count, half)
            self.run.record_event("oom_backoff", {"rows": count, "retry_rows": half, "block": task.block.index})
        if self.policy is None:  # judging without executing SQL is cheap: here
            self.settle(task, flow.judge_block(self.cfg, task.units, answers, self.run.dedup))
            return
        self.start_judging(task, answers)

    def answered(self, actor, task: Task) -> None:
        sent = self.sent[actor]
        sent.remove(task)
        if not sent:
            del self.sent[actor]
            self.culprits.pop(actor, None)  # the last of a lost worker's tasks: nothing to count against

    def start_judging(self, task: Task, answers: list) -> None:
        dedup = flow.dedup_part(self.run.dedup, task.block.samples)
        ref = judge_block.options(num_cpus=1).remote(self.cfg, self.policy, task.units, answers, dedup)
        self.judging[ref] = (task, answers)

    def judged(self, ref) -> None:
        task, answers = self.judging.pop(ref)
        try:
            judged, dedup = ray.get(ref)
        except LOST as exc:
            task.tries += 1
            if task.tries >= MAX_TRIES:
                raise CheckError(f"judging block {task.block.index} failed {task.tries} times ({exc})") from None
            log.warning("judging block %d lost (%s): judged again", task.block.index, type(exc).__name__)
            self.start_judging(task, answers)
            return
        flow.dedup_merge(self.run.dedup, dedup)
        self.settle(task, judged)

    def settle(self, task: Task, judged: list) -> None:
        """A task's judged units settled: kept for its block's commit; further attempts queued first."""
        settled = self.samples.settle(judged)
        block = task.block
        block.items += settled.items
        block.paired += settled.paired
        block.checked += settled.checked
        if settled.further:
            block.added += len(settled.further)
            block.tasks += 1
            self.queue.appendleft(Task(block, settled.further))
        block.tasks -= 1

    def retry(self, task: Task, exc: BaseException, counted: bool = True) -> None:
        """A task whose worker was lost, back to the front of the queue; a try counted when it was
        the task being generated (one the worker died on this often stops the run)."""
        task.tries += counted
        if task.tries >= MAX_TRIES:
            raise PrefgenError(
                f"block {task.block.index} was lost with its worker {task.tries} times; last: {type(exc).__name__}",
                hint="see the Ray logs of the workers' nodes; run the same command again to resume",
            )
        units, index = len(task.units), task.block.index
        if counted:
            log.warning("block %d (%d units) goes back to the queue (try %d)", index, units, task.tries + 1)
        else:
            log.warning("block %d (%d units) goes back to the queue (it waited behind the lost one)", index, units)
        detail = {"block": index, "units": units, "counted": counted, "error": str(exc)[:200]}
        self.run.record_event("block_retried", detail)
        self.queue.appendleft(task)

    def commit_ready(self) -> None:
        """Commit, in order, the open blocks at the front that have no task left."""
        while self.blocks and self.blocks[0].tasks == 0:
            block = self.blocks.popleft()
            flow.commit(self.run, block.items, block.paired, block.checked)
            self.done += len(block.items)
            flow.forget(self.run, self.samples, block.samples)
            self.advance(len(block.items), block.added)
