"""`prefgen generate`: drive the flow from records to committed units, resumably.

records -> plan -> skip what the ledger has -> batch -> generate (an engine: transformers or
  vLLM, behind prefgen.engines.base.Engine) -> extract/judge -> (with --db-root) execution
  verdicts in worker processes -> (with --pairs onpolicy) pairs of completed samples -> commit

This module is the driver: open the ledger and the output, reconcile them with the input,
plan what is pending, load the engine, feed batches to the commit pipeline (pipeline.py: a
batch generates while the one before it is judged and committed), and summarise. Which
attempts a sample needs is attempts.py's rule. The run loop never asks which engine it drives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import Iterator

import orjson

from prefgen.resume import raise_cap
from prefgen.flow.batching import batches
from prefgen.flow.commit import OutputJournal
from prefgen.config import GenerateConfig
from prefgen.engines.base import Engine
from prefgen.errors import Interrupted, OutputError
from prefgen.resume.identity import check_identity
from prefgen.ledger.store import Ledger
from prefgen.flow.pending import pending_units, scan_records
from prefgen.executors.local import CommitPipeline, OpenSamples, attempt_rule
from prefgen.flow.plan import plan_units, shard
from prefgen.flow.records import iter_records, require_string_field
from prefgen.runtime.faults import fault_point
from prefgen.runtime.lock import exclusive
from prefgen.units import RETRIED_STATUSES, WorkUnit

log = logging.getLogger("prefgen")

AUTO_PROBE_RECORDS = 64  # --batch-size auto sizes batches for the longest of the first records
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class Summary:
    """What a generate call did."""

    total_units: int
    done_before: int
    done_now: int
    counts: dict[str, int]
    output: Path
    ledger: Path
    answers: dict | None = None  # generated, reused, regenerated, saved_gpu_s (reuse.answer_sources)
    golds: dict | None = None  # the gold checks, with --db-root (ledger.inspect.golds_data)

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
    """The run's progress bar over all its units (tqdm; disabled by --no-progress)."""
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


def advance(bar, summary: Summary, units: int, added: int) -> None:
    """Count a commit on the progress bar; further attempts it planned add to the total."""
    bar.update(units)
    if added:
        summary.total_units += added
        bar.total += added
        bar.refresh()


class BatchRows:
    """Rows per batch: --batch-size, or for `auto` the size found at start-up, lowered after an
    out-of-memory backoff to the size that was retried, so that later batches start there."""

    def __init__(self, ledger: Ledger, run_id: int, rows: int, auto: bool):
        self.ledger, self.run_id, self.rows, self.auto = ledger, run_id, rows, auto

    def __call__(self) -> int:
        return self.rows

    def backoff(self, rows: int, half: int) -> None:
        """An out-of-memory backoff from `rows` to `half` rows at once: warn and record it."""
        log.warning("out of memory with %d rows: retrying as batches of %d", rows, half)
        detail = {"rows": rows, "retry_rows": half}
        if self.auto and half < self.rows:
            self.rows = half  # auto: later batches start at the size that fits
            detail["batch_size"] = half
        self.ledger.record_event(self.run_id, "oom_backoff", detail)


def generate(cfg: GenerateConfig, argv: list[str], show_progress: bool = True, engine: Engine | None = None) -> Summary:
    """Run (or resume) generation as `cfg` asks. Library errors are PrefgenError subclasses.

    `engine` is an already loaded Engine to use instead of loading the model (benchmarks).
    """
    output, ledger_path = cfg.output_path, cfg.ledger_path
    if cfg.executor == "ray":
        from prefgen.executors.ray import require_ray

        require_ray()  # before anything is touched: Ray not installed is a one-line error
    check_writable(output, "--output")
    check_writable(ledger_path, "--ledger")
    with exclusive(output), exclusive(ledger_path), StopSignals() as stop:
        cfg, marker = raise_cap.prepare(cfg)  # a larger --max-new-tokens: the run so far moved aside
        ledger = Ledger(ledger_path)
        try:
            cfg = raise_cap.adopt(cfg, ledger, marker)
            fault_point("after_ledger_open")
            return GenerateRun(cfg, ledger, stop, show_progress).execute(argv, engine)
        finally:
            ledger.close()


class GenerateRun:
    """One process's run over its ledger: reconcile, plan, load the engine, loop, summarise."""

    def __init__(self, cfg: GenerateConfig, ledger: Ledger, stop: StopSignals, show_progress: bool):
        stored = ledger.meta("fingerprint")  # --evaluator unset: the rule the ledger was made with
        cfg = cfg.for_ledger(orjson.loads(stored) if stored else None)
        self.cfg, self.ledger, self.stop, self.show_progress = cfg, ledger, stop, show_progress
        self.journal = OutputJournal(ledger, cfg.output_path, cfg.db_field)
        self.policy = cfg.check_policy()
        self.rule = attempt_rule(cfg)
        self.kept: dict[int, set[str]] = {}  # sample -> its candidates' SQL, for --dedup-rejects
        self.run_id = 0

    def records(self):
        """This process's records of the input, checked for --db-field when SQL is executed."""
        cfg = self.cfg
        records = shard(iter_records(cfg.sft_data, cfg.max_samples), cfg.rank, cfg.world_size)
        if self.policy:
            hint = "--db-field names the field holding the database id"
            records = require_string_field(records, cfg.db_field, cfg.sft_data, hint)
        return records

    def counts(self) -> dict[str, int]:
        return self.ledger.status_counts(max_sample=self.cfg.max_samples or None)

    def execute(self, argv: list[str], engine: Engine | None = None) -> Summary:
        """Reconcile, then generate what is pending (if anything) as one run in the ledger."""
        cfg, ledger = self.cfg, self.ledger
        ledger.check_fingerprint(cfg.fingerprint())
        check_identity(ledger, cfg)  # what is at the model and adapter paths, not only the paths
        if self.policy:
            self.policy.check()
        self.journal.open()
        try:
            summary = self.reconcile()
            units = pending_units(self.records(), ledger, self.rule, cfg.seed, self.kept, cfg.dedup_rejects)
            first = next(units, None)  # one pass: its first unit tells whether there is work
            if first is None:
                return self.report(summary)
            self.run_id = ledger.start_run(cfg.settings(), argv)
            try:
                run_units = self.run_on_ray if cfg.executor == "ray" else self.run_batches
                summary.done_now = run_units(summary, chain([first], units), engine)
            except Interrupted as exc:
                ledger.end_run(self.run_id, "interrupted", reason=str(exc))
                raise
            except BaseException as exc:
                ledger.end_run(self.run_id, "failed", reason=type(exc).__name__, error=str(exc))
                raise
            ledger.end_run(self.run_id, "finished")
            summary.counts = self.counts()
            return self.report(summary)
        finally:
            self.journal.close()

    def report(self, summary: Summary) -> Summary:
        """The summary with the answers' sources and the gold checks, read while the run's own
        connection is open (a read-only one opened after it would leave the WAL files behind)."""
        from prefgen.ledger.inspect import golds_data
        from prefgen.resume.reuse import answer_sources

        summary.answers = answer_sources(self.ledger.db)
        summary.golds = golds_data(self.ledger.db, self.cfg.fingerprint())
        return summary

    def reconcile(self) -> Summary:
        """Check every record against the ledger, record the input's totals, count what is done."""
        cfg, ledger = self.cfg, self.ledger
        samples = scan_records(self.records(), ledger)
        meta = {"samples_total": str(samples), "num_rejects": str(cfg.num_rejects), "max_attempts": str(cfg.attempts)}
        with ledger.db.atomic():
            ledger.set_meta(meta)
        counts = self.counts()
        done_before = sum(n for status, n in counts.items() if status not in RETRIED_STATUSES)
        total = samples * cfg.num_rejects + ledger.further_attempts(cfg.num_rejects, cfg.max_samples or None)
        return Summary(total, done_before, 0, counts, cfg.output_path, cfg.ledger_path)

    def load(self, engine: Engine | None = None) -> Engine:
        """The engine (loaded now, unless given), recorded in the ledger."""
        if engine is None:
            from prefgen.engines import load_engine

            engine = load_engine(self.cfg) if not self.cfg.reuse_answers else self.reuse_engine(load_engine)
        self.ledger.record_event(
            self.run_id,
            "model_loaded",
            {"engine": self.cfg.engine, "device": engine.device, "adapter_merged": engine.adapter_merged,
             **getattr(engine, "settings", {})},  # vLLM: the batch sizes and LoRA mode it used
        )
        fault_point("after_model_load")
        self.stop.check()
        return engine

    def reuse_engine(self, load_engine) -> Engine:
        """--reuse-answers: the earlier run's answers; the model is loaded only for what it lacks."""
        from prefgen.resume.reuse import reuse_engine

        return reuse_engine(self.cfg, lambda: load_engine(self.cfg))

    def choose_batch_size(self, engine: Engine) -> int:
        """`--batch-size`, or for `auto` the largest that fits the longest of the first prompts."""
        if self.cfg.batch_size != "auto":
            return self.cfg.batch_size
        first = plan_units(islice(self.records(), AUTO_PROBE_RECORDS), 1, self.cfg.seed)
        longest = max((engine.prompt_length(u) for u in first), default=1)
        rows = engine.find_batch_size(longest)
        log.info("--batch-size auto: %d rows fit (prompt %d + %d new tokens)", rows, longest, self.cfg.max_new_tokens)
        self.ledger.record_event(self.run_id, "batch_size_auto", {"rows": rows, "prompt_tokens": longest})
        return rows

    def run_batches(self, summary: Summary, units: Iterator[WorkUnit], engine: Engine | None = None) -> int:
        """Load the engine and generate batch after batch through the commit pipeline; return
        the units committed. Whatever happens, no engine thread is left running, and the
        processes this run started (an engine it loaded, the verdict workers) are closed."""
        cfg = self.cfg
        owned = engine is None  # an engine this run loads, it closes (with its processes, if any)
        checker = pipeline = loaded = None
        if self.policy:  # the workers start while the model loads
            from prefgen.sql.workers import CheckerPool

            checker = CheckerPool(self.policy, cfg.exec_workers)
        try:
            loaded = self.load(engine)
            rows = BatchRows(self.ledger, self.run_id, self.choose_batch_size(loaded), cfg.batch_size == "auto")
            overlap = cfg.overlap if cfg.overlap is not None else loaded.overlap_default
            with progress_bar(summary.total_units, summary.done_before, self.show_progress) as bar:
                samples = OpenSamples(cfg, self.ledger, self.rule)
                pipeline = CommitPipeline(
                    cfg,
                    loaded,
                    self.journal,
                    self.run_id,
                    samples,
                    self.kept,
                    checker,
                    on_backoff=rows.backoff,
                    on_commit=partial(advance, bar, summary),
                )
                self.loop(pipeline, units, rows, overlap)
        except BaseException as exc:
            if pipeline and not (isinstance(exc, Interrupted) and exc.immediate):
                pipeline.wait_quietly()  # a second signal stops at once; otherwise never leave torch running
            raise
        finally:
            if checker:
                checker.close()
            if owned and loaded is not None:
                loaded.close()
        return pipeline.done

    def run_on_ray(self, summary: Summary, units: Iterator[WorkUnit], engine: Engine | None = None) -> int:
        """--executor ray: the pending units as blocks over a Ray cluster (prefgen/executors/ray.py)."""
        from prefgen.executors.ray import run_on_ray

        return run_on_ray(self, summary, units)

    def loop(self, pipeline: CommitPipeline, units: Iterator[WorkUnit], rows: BatchRows, overlap: bool) -> None:
        """Batch after batch of the pending units, then of the further attempts their commits
        planned, until none is left. Without overlap, or once a stop is asked for, each batch is
        committed before the next starts."""
        cfg, stop = self.cfg, self.stop
        while True:
            tracked = pipeline.samples.tracked(units)
            prompt_length = pipeline.engine.prompt_length
            for batch in batches(tracked, rows, cfg.max_batch_tokens, cfg.lookahead, prompt_length, cfg.max_new_tokens):
                pipeline.step(batch)
                if not overlap or stop.received is not None:
                    # a stop waits for the batch in flight and commits everything first
                    pipeline.settle(drain=stop.received is not None)
                    stop.check()
            pipeline.settle(drain=True)
            if not pipeline.samples.followups:
                return
            units = iter(())  # only the further attempts the last commits asked for
