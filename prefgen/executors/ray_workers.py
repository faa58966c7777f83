"""What runs on the cluster: engine workers (Ray actors, each holding one prefgen engine) and
the judging stage (a Ray task on a CPU, so that executing SQL never holds a GPU).

Both only call prefgen's own steps (executors/ray_flow.py); what they return (Answers, Judged
units) are the flow's plain dataclasses.
"""

from __future__ import annotations

import logging

import ray

import prefgen.executors.ray_flow as flow

_checkers: dict = {}  # CheckPolicy -> Checker, per worker process: connections and golds reused


@ray.remote(max_restarts=0, max_task_retries=0)
class EngineWorker:
    """One engine, loaded once; answers blocks of units. Its batch size is found on the first
    block with --batch-size auto, and lowered after an out-of-memory backoff, as locally."""

    def __init__(self, cfg, threads: int = 0):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s prefgen worker: %(message)s")
        self.cfg = cfg
        if threads:  # a CPU engine: Ray would give it the one thread of its logical CPU
            import torch

            torch.set_num_threads(threads)
        self.engine = flow.load_engine(cfg)
        self.rows = 0

    def info(self) -> dict:
        """Where it runs and what it loaded (the ledger's model_loaded event)."""
        context = ray.get_runtime_context()
        return {**flow.engine_info(self.engine, self.cfg), "node": context.get_node_id()[:12]}

    def generate(self, units: list) -> tuple[list, list, int]:
        """The block's answers in unit order, the backoffs made, and the rows per batch used."""
        if not self.rows:
            self.rows = flow.batch_rows(self.engine, self.cfg, units)
        answers, backoffs = flow.generate_block(self.engine, self.cfg, units, lambda: self.rows)
        rows = self.rows
        for _, half in backoffs:
            if self.cfg.batch_size == "auto" and half < self.rows:
                self.rows = half  # later blocks start at the size that fit
        return answers, backoffs, rows

    def close(self) -> None:
        self.engine.close()


@ray.remote(max_retries=0)
def judge_block(cfg, policy, units: list, answers: list, dedup) -> tuple[list, object]:
    """A block judged and, with --db-root, its SQL executed: (judged units, the block's samples'
    dedup index, updated)."""
    check = None
    if policy is not None:
        check = _checkers.get(policy)
        if check is None:
            check = _checkers[policy] = flow.checker(policy)
    return flow.judge_block(cfg, units, answers, dedup, check), dedup
