"""`prefgen generate --executor ray`: one run over a Ray cluster.

The executor plugs into the seam every executor uses (docs/layout.md): `executors.generate()`
has checked the start, locked, opened the ledger, resolved the settings and reconciled
(flow/run.py) before `RayExecutor.execute` gets the open `Run` and its pending units. It hands
them out as blocks of whole samples to engine workers, Ray actors that each hold one prefgen
engine (ray_workers.py, ray_pool.py); with --db-root each generated block is judged by a Ray task
on a CPU; the driver settles samples (gold checks, on-policy pairs, further attempts) and
commits whole blocks in order with the run's own commit step (ray_blocks.py). The ledger stays
the one record of what is done: rerunning the same command resumes, with either executor.
docs/scale.md says why this shape. That Ray is installed is checked at start-up
(flow/start.py), before any file is made.

The cluster: --ray-address, else RAY_ADDRESS, else a Ray of the run's own on this machine,
started after prefgen's reaper token is set (runtime/processes.py): it ends with the run, even
when the run is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterable, Iterator

import prefgen.executors.ray_flow as flow
from prefgen.engines.base import Engine
from prefgen.flow.run import Run
from prefgen.units import WorkUnit

log = logging.getLogger("prefgen")

WAIT_VAR = "PREFGEN_RAY_WAIT_S"  # how long the run waits for --workers MIN to be placed
DEFAULT_WAIT_S = 600.0


class RayExecutor:
    """Runs a run's pending units on Ray: engine workers generate, the driver commits."""

    def execute(self, run: Run, units: Iterator[WorkUnit], engine: Engine | None = None) -> int:
        """Generate, judge and commit the pending `units` on Ray; return the units committed.
        An engine handed in is not used: each worker loads its own."""
        if engine is not None:
            log.warning("--executor ray: the engine handed in is not used; each worker loads its own")
        return run_on_ray(run, units)


def cluster_address(cfg) -> str:
    """The cluster to join: --ray-address, else RAY_ADDRESS; "": none, start one."""
    return cfg.ray_address or os.environ.get("RAY_ADDRESS", "")


@contextlib.contextmanager
def ray_session(cfg, workers: int) -> Iterator[bool]:
    """Ray connected for the run, or started for it (yields whether it is the run's own)."""
    import ray

    address = cluster_address(cfg)
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        from prefgen.runtime.processes import guard_children

        guard_children()  # every Ray process started below carries the token: it dies with the run
        cpus = max(os.cpu_count() or 1, workers + 2)  # a CPU worker each, and room to judge
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
    try:
        yield not address
    finally:
        ray.shutdown()


def worker_gpus(cfg, own: bool) -> float:
    """GPUs Ray reserves for each engine worker: --gpus-per-worker, else 0 with --device cpu, and
    with --device auto 0 only on a Ray of the run's own on a machine without GPUs. A cluster the
    run joins may have no GPU yet (an autoscaler adds them for the workers that ask): there a
    worker asks 1, and --device cpu says otherwise."""
    import ray

    if cfg.gpus_per_worker is not None:
        return float(cfg.gpus_per_worker)
    if cfg.device == "cpu" or (cfg.device == "auto" and own and not ray.cluster_resources().get("GPU", 0)):
        return 0.0
    return 1.0


def default_workers(gpus: float) -> int:
    """MAX when --workers is not given: as many as the cluster's GPUs hold (1 on CPUs)."""
    import ray

    if not gpus:
        return 1
    return max(1, int(ray.cluster_resources().get("GPU", 0) // gpus))


def run_on_ray(run: Run, units: Iterable[WorkUnit]) -> int:
    """Generate, judge and commit the pending `units` on Ray; return the units committed."""
    from prefgen.executors.ray_blocks import Scheduler
    from prefgen.executors.ray_pool import WorkerPool

    cfg = run.cfg
    low, high = cfg.worker_range
    with ray_session(cfg, high or low) as own:
        gpus = worker_gpus(cfg, own)
        high = high or max(low, default_workers(gpus))
        where = "a Ray of its own" if own else cluster_address(cfg)
        log.info("--executor ray on %s: %d-%d engine workers, blocks of %d units", where, low, high, cfg.block_size)
        # CPU engines on a Ray of the run's own share this machine's cores (more threads would only contend)
        threads = max(1, (os.cpu_count() or 1) // high) if own and not gpus else 0
        pool = WorkerPool(flow.worker_config(cfg), low, high, gpus, lambda info: on_ready(run, info), threads)
        try:
            pool.start()
            pool.wait_for_minimum(float(os.environ.get(WAIT_VAR, DEFAULT_WAIT_S)))
            run.stop.check()
            with run.progress() as advance:
                return Scheduler(run, pool, units, advance).execute()
        finally:
            pool.close()


def on_ready(run: Run, info: dict) -> None:
    """A worker loaded its engine: recorded as a local run records its one."""
    run.record_event("model_loaded", {**info, "executor": "ray"})
