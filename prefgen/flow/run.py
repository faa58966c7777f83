"""A generate run's session: what every executor shares around the flow's steps.

An executor (executors/local.py, or a cluster one) is handed an open `Run` and the pending
units, and calls the steps in this order (docs/layout.md, "The seam"):

1. `run.load_engine()`: the engine (steps 5-6), recorded in the ledger;
2. per batch: `engine.start`/`engine.answers`, then `judge.judge_batch(units, answers,
   run.dedup, onpolicy)` and, with --db-root, the execution verdicts (`judge.with_verdict`);
3. `settle.OpenSamples(run.cfg, run.ledger, run.rule).settle(judged)`: gold checks, pairs and
   further attempts of the samples a batch completes;
4. `run.commit(settled)`: the JSONL and the ledger together (commit.py), in order.

Everything before (settings resolved against the ledger, the resume checks, reconciling the
output and the input, what is pending) and after (the run's end in the ledger, the summary,
a .json output's array) is done here, once, whichever executor ran the units.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from prefgen.config import DB_FIELD_HINT, GenerateConfig
from prefgen.engines.base import Engine
from prefgen.flow.commit import OutputJournal
from prefgen.flow.judge import DedupIndex
from prefgen.flow.pending import pending_units, scan_records
from prefgen.flow.plan import shard
from prefgen.flow.records import iter_records, require_string_field
from prefgen.flow.settle import Settled, attempt_rule
from prefgen.ledger import keys
from prefgen.ledger.answers import answer_sources
from prefgen.ledger.store import Ledger
from prefgen.runtime.faults import fault_point
from prefgen.runtime.signals import StopSignals
from prefgen.units import RETRIED_STATUSES, WorkUnit


@dataclass
class Summary:
    """What a generate call did."""

    total_units: int
    done_before: int
    done_now: int
    counts: dict[str, int]
    output: Path
    ledger: Path
    answers: dict | None = None  # generated, reused, regenerated, saved_gpu_s (ledger.answers.answer_sources)
    golds: dict | None = None  # the gold checks, with --db-root (ledger.inspect.golds_data)
    array: Path | None = None  # a .json output's array, once written
    adopted: bool = False  # a .json output begun as JSON Lines by an earlier prefgen, now its journal

    @property
    def finished(self) -> bool:
        return self.done_before + self.done_now >= self.total_units and not any(
            self.counts.get(s) for s in RETRIED_STATUSES
        )


class Run:
    """One process's run over its ledger, its settings resolved against what the ledger recorded."""

    def __init__(self, cfg: GenerateConfig, ledger: Ledger, stop: StopSignals, show_progress: bool = True):
        self.cfg, self.ledger, self.stop, self.show_progress = cfg, ledger, stop, show_progress
        self.journal = OutputJournal(ledger, cfg.output_path, cfg.db_field)
        self.policy = cfg.check_policy()
        self.rule = attempt_rule(cfg)
        self.dedup = DedupIndex(cfg.dedup_rejects)
        self.run_id = 0
        self.summary: Summary | None = None

    def records(self):
        """This process's records of the input, checked for --db-field when SQL is executed."""
        cfg = self.cfg
        records = shard(iter_records(cfg.sft_data, cfg.max_samples), cfg.rank, cfg.world_size)
        if self.policy:
            records = require_string_field(records, cfg.db_field, cfg.sft_data, DB_FIELD_HINT)
        return records

    def counts(self) -> dict[str, int]:
        return self.ledger.status_counts(max_sample=self.cfg.max_samples or None)

    def reconcile(self) -> Summary:
        """Check every record against the ledger, record the input's totals, count what is done."""
        cfg, ledger = self.cfg, self.ledger
        self.journal.open()
        samples = scan_records(self.records(), ledger)
        ledger.update_meta(
            {
                keys.SAMPLES_TOTAL: str(samples),
                keys.NUM_REJECTS: str(cfg.num_rejects),
                keys.MAX_ATTEMPTS: str(cfg.attempts),
            }
        )
        counts = self.counts()
        done_before = sum(n for status, n in counts.items() if status not in RETRIED_STATUSES)
        total = samples * cfg.num_rejects + ledger.further_attempts(cfg.num_rejects, cfg.max_samples or None)
        self.summary = Summary(total, done_before, 0, counts, cfg.output_path, cfg.ledger_path)
        return self.summary

    def pending(self) -> Iterator[WorkUnit]:
        """The units still to generate, in plan order (the dedup index learns each sample's candidates)."""
        return pending_units(self.records(), self.ledger, self.rule, self.cfg.seed, self.dedup.remember)

    def start(self, argv: list[str]) -> None:
        """Open this process's row in the ledger's runs."""
        self.run_id = self.ledger.start_run(self.cfg.settings(), argv)

    def end(self, status: str, reason: str = "", error: str = "") -> None:
        """Close this process's row: finished, interrupted or failed, and why."""
        self.ledger.end_run(self.run_id, status, reason=reason, error=error)

    def record_event(self, kind: str, detail: dict) -> None:
        self.ledger.record_event(self.run_id, kind, detail)

    def load_engine(self, engine: Engine | None = None) -> Engine:
        """The engine (loaded now, unless given), recorded in the ledger."""
        if engine is None:
            engine = load_engine(self.cfg)
        self.record_event("model_loaded", engine_info(engine, self.cfg))
        fault_point("after_model_load")
        self.stop.check()
        return engine

    def commit(self, settled: Settled) -> None:
        """Commit a settled batch: its lines, units, pairs and gold checks, together."""
        self.journal.commit(self.run_id, settled.items, settled.paired, settled.checked)

    @contextlib.contextmanager
    def progress(self) -> Iterator[Callable[[int, int], None]]:
        """The run's one progress bar over all its units; yields `advance(units, added)`: count a
        commit, and add the further attempts it planned to the total."""
        from tqdm import tqdm

        summary = self.summary
        with tqdm(
            total=summary.total_units,
            initial=summary.done_before,
            unit="unit",
            desc="generate",
            disable=not self.show_progress,
            dynamic_ncols=True,
            smoothing=0.05,
        ) as bar:

            def advance(units: int, added: int) -> None:
                bar.update(units)
                if added:
                    summary.total_units += added
                    bar.total += added
                    bar.refresh()

            yield advance

    def report(self) -> Summary:
        """The summary with the answers' sources and the gold checks, read while the run's own
        connection is open (a read-only one opened after it would leave the WAL files behind)."""
        from prefgen.ledger.inspect import golds_data

        summary = self.summary
        summary.answers = answer_sources(self.ledger)
        summary.golds = golds_data(self.ledger, self.ledger.fingerprint() or {})  # recorded by resume()
        return summary


def engine_info(engine: Engine, cfg: GenerateConfig) -> dict:
    """What the ledger's `model_loaded` event records of an engine (vLLM: the sizes it chose)."""
    return {"engine": cfg.engine, "device": engine.device, "adapter_merged": engine.adapter_merged, **engine.settings}


def load_engine(cfg: GenerateConfig) -> Engine:
    """The run's engine: the one --engine names, or for --reuse-answers the earlier run's
    answers, with that engine loaded only for what they lack."""
    from prefgen.engines import load_engine as load

    if not cfg.reuse_answers:
        return load(cfg)
    from prefgen.resume.reuse import reuse_engine

    return reuse_engine(cfg, lambda: load(cfg))
