"""Who runs the flow's steps: the local loop (`local`, in this process) or a cluster (`ray`:
ray.py, one run over a Ray cluster; ray_flow.py is the one place it calls the flow's steps).

`generate()` is what `prefgen generate` calls: it checks the start, opens the ledger under the
run's locks, resolves the settings against what the ledger recorded (resume/), reconciles the
output and the input (flow/run.py), hands the pending units to the executor, and ends the run:
its row in the ledger, the summary and, for a .json output, the array.
"""

from __future__ import annotations

from itertools import chain

from prefgen.config import GenerateConfig
from prefgen.engines.base import Engine
from prefgen.errors import Interrupted
from prefgen.files.json_output import adopt_earlier_output, write_json_output
from prefgen.flow.run import Run, Summary
from prefgen.flow.start import check_start
from prefgen.ledger.store import Ledger
from prefgen.resume import raise_cap
from prefgen.resume.settings import resume
from prefgen.runtime.faults import fault_point
from prefgen.runtime.lock import exclusive
from prefgen.runtime.signals import StopSignals


def executor_for(cfg: GenerateConfig):
    """The executor the settings name: the local loop, or with --executor ray one run over a Ray
    cluster (executors/ray.py, imported only then: Ray is an extra)."""
    if cfg.executor == "ray":
        from prefgen.executors.ray import RayExecutor

        return RayExecutor()
    from prefgen.executors.local import LocalExecutor

    return LocalExecutor()


def generate(cfg: GenerateConfig, argv: list[str], show_progress: bool = True, engine: Engine | None = None) -> Summary:
    """Run (or resume) generation as `cfg` asks. Library errors are PrefgenError subclasses.

    `engine` is an already loaded Engine to use instead of loading the model (benchmarks, tests).
    """
    check_start(cfg, engine_given=engine is not None)
    adopted = adopt_earlier_output(cfg.target_path, cfg.output_path, cfg.ledger_path)
    output, ledger_path = cfg.output_path, cfg.ledger_path
    with exclusive(output), exclusive(ledger_path), StopSignals() as stop:
        cfg, marker = raise_cap.prepare(cfg)  # a larger --max-new-tokens: the run so far moved aside
        ledger = Ledger(ledger_path)
        try:
            cfg = raise_cap.adopt(cfg, ledger, marker)
            fault_point("after_ledger_open")
            run = Run(resume(cfg, ledger), ledger, stop, show_progress)
            summary = execute(run, argv, engine)
        finally:
            ledger.close()
        summary.adopted = adopted
        if cfg.target_path != summary.output and summary.finished:  # a .json output: its array, now complete
            write_json_output(summary.output, cfg.target_path)
            summary.array = cfg.target_path
    return summary


def execute(run: Run, argv: list[str], engine: Engine | None = None) -> Summary:
    """Reconcile, then generate what is pending (if anything) as one run in the ledger."""
    try:
        summary = run.reconcile()
        units = run.pending()
        first = next(units, None)  # one pass: its first unit tells whether there is work
        if first is None:
            return run.report()
        run.start(argv)
        try:
            summary.done_now = executor_for(run.cfg).execute(run, chain([first], units), engine)
        except Interrupted as exc:
            run.end("interrupted", reason=str(exc))
            raise
        except BaseException as exc:
            run.end("failed", reason=type(exc).__name__, error=str(exc))
            raise
        run.end("finished")
        summary.counts = run.counts()
        return run.report()
    finally:
        run.journal.close()
