"""`prefgen generate --executor ray`: one run over a Ray cluster.

The driver (this process) does what a local run does up to the pending units (lock, ledger,
fingerprint, reconcile: prefgen/flow/run.py), then hands them out as blocks of whole samples to
engine workers, Ray actors that each hold one prefgen engine (ray_workers.py, ray_pool.py); with
--db-root each generated block is judged by a Ray task on a CPU; the driver settles samples
(gold checks, on-policy pairs, further attempts) and commits whole blocks in order with
prefgen's own commit step (ray_blocks.py). The ledger stays the one record of what is done:
rerunning the same command resumes, with either executor. docs/scale.md says why this shape.

The cluster: --ray-address, else RAY_ADDRESS, else a Ray of the run's own on this machine,
started after prefgen's reaper token is set (runtime/processes.py): it ends with the run, even
when the run is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from typing import Iterable, Iterator

from prefgen.errors import ConfigError
from prefgen.executors import ray_flow as flow
from prefgen.units import WorkUnit

log = logging.getLogger("prefgen")

WAIT_VAR = "PREFGEN_RAY_WAIT_S"  # how long the run waits for --workers MIN to be placed
DEFAULT_WAIT_S = 600.0
INSTALL_HINT = "pip install 'prefgen[ray]'"


def require_ray() -> None:
    """Refuse --executor ray, in one line, where Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--executor ray needs Ray, which is not installed", hint=INSTALL_HINT)


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


def default_workers(cfg) -> int:
    """MAX when --workers is not given: as many as the cluster's GPUs hold (1 on CPUs)."""
    import ray

    gpus = cfg.worker_gpus
    if not gpus:
        return 1
    return max(1, int(ray.cluster_resources().get("GPU", 0) // gpus))


def run_on_ray(run: flow.GenerateRun, summary: flow.Summary, units: Iterable[WorkUnit]) -> int:
    """Generate, judge and commit the pending `units` on Ray; return the units committed."""
    from prefgen.executors.ray_blocks import Scheduler
    from prefgen.executors.ray_pool import WorkerPool

    cfg = run.cfg
    low, high = cfg.worker_range
    with ray_session(cfg, high or low) as own:
        high = high or max(low, default_workers(cfg))
        where = "a Ray of its own" if own else cluster_address(cfg)
        log.info("--executor ray on %s: %d-%d engine workers, blocks of %d units", where, low, high, cfg.block_size)
        # CPU engines on a Ray of the run's own share this machine's cores (more threads would only contend)
        threads = max(1, (os.cpu_count() or 1) // high) if own and cfg.device == "cpu" else 0
        pool = WorkerPool(flow.worker_config(cfg), low, high, cfg.worker_gpus, lambda info: on_ready(run, info), threads)
        try:
            pool.start()
            pool.wait_for_minimum(float(os.environ.get(WAIT_VAR, DEFAULT_WAIT_S)))
            run.stop.check()
            with flow.progress_bar(summary.total_units, summary.done_before, run.show_progress) as bar:
                return Scheduler(run, pool, units, bar, summary).execute()
        finally:
            pool.close()


def on_ready(run: flow.GenerateRun, info: dict) -> None:
    """A worker loaded its engine: recorded as a local run records its one."""
    flow.record_event(run, "model_loaded", {**info, "executor": "ray"})
