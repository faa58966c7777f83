"""The one place the Ray executor calls into prefgen's flow: load an engine, generate a block
with it, judge a block, settle samples and commit. Everything here is the local run's own code
(flow/run.py's Run and load_engine, flow/batching.py, flow/judge.py, flow/settle.py,
executors/local.py, sql/workers.py), reached through these few functions so that the executor
follows the flow wherever its steps live. Imports no Ray.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from prefgen.config import GenerateConfig, resolve_model_ref
from prefgen.engines.base import Engine
from prefgen.executors.local import auto_rows
from prefgen.flow.batching import batches
from prefgen.flow.commit import unit_row
from prefgen.flow.judge import DedupIndex, judge_batch, with_verdict
from prefgen.flow.run import Run, engine_info, load_engine
from prefgen.flow.settle import OpenSamples, Settled
from prefgen.units import CANDIDATE, WRITTEN, Answer, Judged, WorkUnit

__all__ = ["engine_info", "load_engine"]


def worker_config(cfg: GenerateConfig) -> GenerateConfig:
    """The settings a worker loads its engine with: paths made absolute (a worker's directory is
    not the driver's; on a cluster they must be on storage every node sees)."""
    absolute = {name: resolve_model_ref(getattr(cfg, name)) for name in ("base_model", "adapter_path")}
    for name in ("reuse_answers", "sft_data"):
        absolute[name] = absolute_path(getattr(cfg, name))
    check = dataclasses.replace(cfg.check, db_root=absolute_path(cfg.db_root))
    return dataclasses.replace(cfg, check=check, **absolute)


def absolute_path(value: str) -> str:
    return str(Path(value).expanduser().resolve()) if value else value


def batch_rows(engine, cfg: GenerateConfig, units: list[WorkUnit]) -> int:
    """--batch-size, or for `auto` the largest that fits the longest of these prompts."""
    if cfg.batch_size != "auto":
        return cfg.batch_size
    return auto_rows(engine, units)[0]


def generate_block(
    engine: Engine, cfg: GenerateConfig, units: list[WorkUnit], rows: Callable[[], int]
) -> tuple[list[Answer], list]:
    """A block's answers in unit order, generated batch by batch as the local loop cuts them
    (rows, --max-batch-tokens, --lookahead), and the out-of-memory backoffs made on the way."""
    position = {unit.key: i for i, unit in enumerate(units)}
    answers: list = [None] * len(units)
    backoffs: list = []
    length = engine.prompt_length
    for batch in batches(units, rows, cfg.max_batch_tokens, cfg.lookahead, length, cfg.max_new_tokens):
        got, made = engine.answers(batch, engine.start(batch))
        backoffs += made
        for unit, answer in zip(batch, got, strict=True):
            answers[position[unit.key]] = answer
    return answers, backoffs


def checker(policy):
    """A Checker (sql/workers.py) for --db-root: connections and gold results cached per process."""
    from prefgen.sql.workers import Checker

    return Checker(policy)


def judge_block(
    cfg: GenerateConfig, units: list[WorkUnit], answers: list[Answer], dedup: DedupIndex, check=None
) -> list[Judged]:
    """Judge a block as the local pipeline does (judge_batch, then with --db-root each written
    reject or candidate executed: CommitPipeline.submit_check / with_verdict); `dedup` updated."""
    judged = judge_batch(units, answers, dedup, cfg.onpolicy)
    if check is None:
        return judged
    return [verdict_of(cfg, item, check) for item in judged]


def verdict_of(cfg: GenerateConfig, item: Judged, check) -> Judged:
    if item.status not in (WRITTEN, CANDIDATE):
        return item
    record = item.unit.record
    verdict = check(record.fields[cfg.db_field], record.output, item.sql)
    return with_verdict(item, verdict, check.policy.keeps(verdict))


def dedup_part(dedup: DedupIndex, samples: set[int]) -> DedupIndex:
    """The dedup index of a block's samples only: what a judging task is sent."""
    part = DedupIndex(dedup.mode)
    part.keys = {sample: set(dedup.keys[sample]) for sample in samples if sample in dedup.keys}
    return part


def dedup_merge(dedup: DedupIndex, part: DedupIndex) -> None:
    """A judging task's index of its block's samples, back into the run's."""
    dedup.keys.update(part.keys)


class UncommittedView:
    """The ledger as OpenSamples.settle reads a sample's units: what is committed, and the units
    settled but not committed yet (a block commits once all its samples are complete)."""

    def __init__(self, ledger):
        self.ledger = ledger
        self.rows: dict[int, dict[int, dict]] = {}

    def add(self, items: list[Judged]) -> None:
        for item in items:
            self.rows.setdefault(item.unit.sample_index, {})[item.unit.reject_index] = unit_row(item)

    def forget(self, samples) -> None:
        for sample in samples:
            self.rows.pop(sample, None)

    def sample_units(self, sample_index: int) -> list[dict]:
        rows = {row["reject_index"]: row for row in self.ledger.sample_units(sample_index)}
        rows.update(self.rows.get(sample_index, {}))
        return [rows[attempt] for attempt in sorted(rows)]


class Samples:
    """The local run's OpenSamples (attempts, gold checks, on-policy pairs), over the ledger with
    the uncommitted units in view."""

    def __init__(self, run: Run):
        self.view = UncommittedView(run.ledger)
        self.open = OpenSamples(run.cfg, self.view, run.rule)

    def track(self, units: list[WorkUnit]) -> None:
        """Count a new block's units in flight per sample (OpenSamples.tracked)."""
        for _ in self.open.tracked(units):
            pass

    def settle(self, judged: list[Judged]) -> Settled:
        settled = self.open.settle(judged)
        self.view.add(settled.items)
        return settled


def commit(run: Run, items: list[Judged], paired: list, checked: list) -> None:
    """Commit a whole block with the run's commit step, in (sample, reject) order."""
    items = sorted(items, key=lambda item: item.unit.key)
    paired = sorted(paired, key=lambda sample: sample.record.index)
    checked = sorted(checked, key=lambda row: row["sample_index"])
    run.commit(Settled(items, paired, checked))


def forget(run: Run, samples: Samples, done: set[int]) -> None:
    """Drop what the driver kept of samples whose block is committed (bounded memory)."""
    samples.view.forget(done)
    run.dedup.forget(lambda sample: sample not in done)
