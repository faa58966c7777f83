"""`bench.py --only ray` (in .venv-ray: `make bench-ray`): the same units locally and with
--executor ray on a Ray of the run's own on this machine, with 1 and 2 engine workers (CPU).

(a) local, end to end (the model loaded by the run); (b) Ray, 1 worker; (c) Ray, 2 workers --
each end to end (wall: Ray started, workers loading their model, Ray shut down) and steady:
from the first engine ready (its model_loaded event) to the last unit committed, what a long
run sees; "end s" is what came after the last commit (Ray's shutdown). (d) the driver alone: the units of
(a) again with --reuse-answers, so the workers answer from (a)'s ledger with no model and the
driver's judge, settle and commit steps set the pace (against ~800 units/s, what 64 GPUs make).
Overhead per block: (b)'s steady time less (a)'s generation time, over (b)'s blocks.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import click

TARGET_1_WORKER = 0.7


def timed(cfg) -> tuple[float, float, int, int, float]:
    """(wall seconds, steady seconds, units, blocks, seconds after the last commit) of one run.
    Steady: from the first engine ready (its model_loaded event) to the last unit committed, what
    a long run sees; start-up (Ray, loading) and the end (Ray's shutdown) are fixed costs."""
    from prefgen.executors import generate
    from prefgen.ledger.store import Ledger

    started, wall_start = time.perf_counter(), time.time()
    summary = generate(cfg, ["bench"], show_progress=False)
    wall = time.perf_counter() - started
    ledger = Ledger(cfg.ledger_path, readonly=True)
    loaded = [row["at"] for row in ledger.db.query("select at from events where kind = 'model_loaded' order by id")]
    last = ledger.db.execute("select max(updated_at) from units").fetchone()[0]
    ledger.close()
    ready = datetime.fromisoformat(loaded[0]).timestamp() if loaded else wall_start
    committed = datetime.fromisoformat(last).timestamp()
    blocks = -(-summary.done_now // cfg.block_size) if cfg.executor == "ray" else 0
    return wall, max(committed - ready, 0.001), summary.done_now, blocks, wall_start + wall - committed


def ray_comparison(cfg, work: Path) -> dict:
    os.environ.setdefault("RAY_TMPDIR", str(work))
    runs = {}
    local = replace(cfg, output=str(work / "ray-local.jsonl"))
    runs["(a) local"] = timed(local)
    for workers in (1, 2):
        ray_cfg = replace(cfg, output=str(work / f"ray-{workers}.jsonl"), executor="ray", workers=str(workers))
        runs[f"({'bc'[workers - 1]}) ray, {workers} worker(s)"] = timed(ray_cfg)
    driver = replace(
        cfg,
        output=str(work / "ray-driver.jsonl"),
        executor="ray",
        workers="2",
        reuse_answers=local.output,
        dedup_rejects="exact",
    )
    runs["(d) ray driver, answers reused"] = timed(driver)
    click.echo(
        f"\nRay (--executor ray, its own Ray, CPU): {cfg.max_samples} samples x {cfg.num_rejects} rejects,"
        f" blocks of {replace(cfg, executor='ray').block_size} units"
    )
    click.echo(f"  {'way':<36} {'wall s':>7} {'units/s':>8} {'steady s':>9} {'units/s':>8} {'end s':>6}")
    rows = {}
    for name, (wall, steady, units, blocks, after) in runs.items():
        rows[name] = {
            "wall_s": wall,
            "steady_s": steady,
            "units": units,
            "blocks": blocks,
            "after_last_commit_s": after,
            "units_per_s": units / wall,
            "steady_units_per_s": units / steady,
        }
        click.echo(
            f"  {name:<36} {wall:>7.2f} {units / wall:>8.1f} {steady:>9.2f} {units / steady:>8.1f} {after:>6.2f}"
        )
    a, b, c = (rows[n] for n in list(rows)[:3])
    ratios = {
        "ray 1 worker / local (wall)": b["units_per_s"] / a["units_per_s"],
        "ray 1 worker / local (steady)": b["steady_units_per_s"] / a["steady_units_per_s"],
        "ray 2 workers / 1 worker (steady)": c["steady_units_per_s"] / b["steady_units_per_s"],
    }
    for name, value in ratios.items():
        target = f"target >= {TARGET_1_WORKER}" if name.startswith("ray 1") else "2 cores: both workers share them"
        click.echo(f"  {name:<36} {value:>7.2f}x  {target}")
    per_block = (b["steady_s"] - a["steady_s"]) / max(b["blocks"], 1)
    click.echo(f"  overhead per block (b steady - a steady) / blocks: {1000 * per_block:.1f} ms")
    start = b["wall_s"] - b["steady_s"] - b["after_last_commit_s"]
    click.echo(
        f"  fixed costs of (b), once a run: {start:.2f} s to the first worker ready (Ray's start, the"
        f" worker's model load), {b['after_last_commit_s']:.2f} s after the last commit (Ray's shutdown)"
    )
    busy, units = driver_busy(driver)
    capacity = units / busy if busy else float("inf")
    click.echo(
        f"  the driver's own work (answers in, judge, settle, commit): {busy:.2f} s for {units} units,"
        f" {capacity:,.0f} units/s  (a 64-GPU cluster makes ~800)"
    )
    return {
        "rows": rows,
        "ratios": ratios,
        "overhead_per_block_s": per_block,
        "start_s": start,
        "driver_units_per_busy_s": capacity,
    }


def driver_busy(cfg) -> tuple[float, int]:
    """The driver's busy seconds and units of a Ray run (its `ray_driver` event)."""
    import orjson

    from prefgen.ledger.store import Ledger

    ledger = Ledger(cfg.ledger_path, readonly=True)
    try:
        rows = list(ledger.db.query("select detail from events where kind = 'ray_driver' order by id desc limit 1"))
    finally:
        ledger.close()
    detail = orjson.loads(rows[0]["detail"]) if rows else {"busy_s": 0.0, "units": 0}
    return detail["busy_s"], detail["units"]
