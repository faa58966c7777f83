"""The engine workers of a Ray run: started up to MAX, the run begins once MIN are ready, a
lost one is replaced, and one that cannot be placed yet waits (an autoscaler, or a node that
joins later, places it). A worker with room takes the next block; which one does is all this
decides. Each worker holds up to DEPTH blocks (one generating, the next queued in the actor),
so it starts its next block the moment it ends one, without waiting for the driver.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import ray
from ray import exceptions as rx

from prefgen.errors import ConfigError, ModelError
from prefgen.executors.ray_workers import EngineWorker

log = logging.getLogger("prefgen")

# A call that failed because a worker, its process or its node went away: its block is redone.
LOST = (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError, rx.OutOfMemoryError)
DEPTH = 2  # blocks a worker holds at once: the one it generates and the next
RESPAWN_DELAY_S = 2.0  # a dead node is noticed by the cluster after a while: its replacement waits
NOTICE_S = 30.0  # how often "still waiting for workers" is said


class WorkerPool:
    """Engine workers (EngineWorker actors): starting, and ready with the blocks each holds."""

    def __init__(self, cfg, low: int, high: int, gpus: float, on_ready: Callable[[dict], None], threads: int = 0):
        self.cfg, self.low, self.high, self.gpus, self.on_ready = cfg, low, high, gpus, on_ready
        self.threads = threads  # torch threads of a CPU engine (0: Ray's default)
        self.starting: dict = {}  # ref of info() -> actor
        self.ready: list = []  # actors that loaded their engine
        self.held: dict = {}  # ready actor -> blocks it holds (generating or queued in it)
        self.gone: set = set()  # workers lost, already replaced
        self.due: list[float] = []  # when replacements are to start
        self.lost_count = 0

    @property
    def refs(self) -> list:
        return list(self.starting)

    def start(self) -> None:
        for _ in range(self.high):
            self.spawn()

    def spawn(self) -> None:
        cpus = 0 if self.gpus else 1  # a GPU worker is placed by its GPUs; judging gets the CPUs
        actor = EngineWorker.options(num_gpus=self.gpus, num_cpus=cpus).remote(self.cfg, self.threads)
        self.starting[actor.info.remote()] = actor

    def tick(self) -> None:
        """Start the replacements that are due."""
        now = time.monotonic()
        for when in [w for w in self.due if w <= now]:
            self.due.remove(when)
            if len(self.ready) + len(self.starting) < self.high:
                self.spawn()

    def started(self, ref) -> None:
        """A worker's info() came back: it is ready; or it died before (replaced)."""
        actor = self.starting.pop(ref)
        try:
            info = ray.get(ref)
        except rx.RayActorError as exc:
            if exc.actor_init_failed:
                raise ModelError(f"an engine worker could not load the engine: {first_lines(exc)}") from None
            self.lost(actor, exc, "while starting")
            return
        self.ready.append(actor)
        self.held[actor] = 0
        log.info("engine worker ready on node %s (%d ready)", info.get("node"), len(self.ready))
        self.on_ready(info)

    def take(self):
        """The ready worker holding the fewest blocks, if one has room (it then holds one more)."""
        actor = min(self.ready, key=self.held.__getitem__, default=None)
        if actor is None or self.held[actor] >= DEPTH:
            return None
        self.held[actor] += 1
        return actor

    def free(self, actor) -> None:
        """A worker gave a block back (answered)."""
        if actor in self.held:
            self.held[actor] -= 1

    def lost(self, actor, exc: BaseException, doing: str) -> None:
        """A worker that died (or whose node did): dropped, killed for good, replaced soon (once,
        however many of its blocks come back failed)."""
        if actor in self.gone:
            return
        self.gone.add(actor)
        self.lost_count += 1
        if actor in self.ready:
            self.ready.remove(actor)
        self.held.pop(actor, None)
        kill(actor)
        log.warning("engine worker lost %s (%s): replacing it", doing, type(exc).__name__)
        self.due.append(time.monotonic() + RESPAWN_DELAY_S)

    def wait_for_minimum(self, timeout: float) -> None:
        """Return once MIN workers are ready; a clear error after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        notice = time.monotonic() + NOTICE_S
        while len(self.ready) < self.low:
            self.tick()
            now = time.monotonic()
            if now >= deadline:
                raise ConfigError(
                    f"only {len(self.ready)} of the {self.low} engine workers --workers asks for could start within "
                    f"{timeout:.0f}s: {self.shortage()}",
                    hint="lower --workers or --gpus-per-worker, add nodes, or set PREFGEN_RAY_WAIT_S to wait longer",
                )
            if now >= notice:
                log.warning(
                    "waiting for engine workers: %d of %d ready; %s", len(self.ready), self.low, self.shortage()
                )
                notice = now + NOTICE_S
            if self.starting:
                ready, _ = ray.wait(self.refs, num_returns=1, timeout=min(1.0, deadline - now))
                for ref in ready:
                    self.started(ref)
            else:
                time.sleep(0.2)

    def shortage(self) -> str:
        """What each worker asks of the cluster, and what the cluster has."""
        total = ray.cluster_resources()
        free = ray.available_resources()
        if self.gpus:
            return (
                f"each asks {self.gpus:g} GPU(s); the cluster has {total.get('GPU', 0):g} GPUs, "
                f"{free.get('GPU', 0):g} free"
            )
        return f"each asks 1 CPU; the cluster has {total.get('CPU', 0):g} CPUs, {free.get('CPU', 0):g} free"

    def close(self) -> None:
        for actor in [*self.ready, *self.starting.values()]:
            kill(actor)
        self.ready, self.starting, self.held = [], {}, {}


def kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone
        pass


def first_lines(exc: BaseException, count: int = 3) -> str:
    """The start of a Ray error's message (its traceback follows)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:count])
