"""`prefgen merge`: combine the per-rank parts of a split run into one output in sample order:
JSON Lines, or one JSON array for a `.json` output."""

from __future__ import annotations

import heapq
from contextlib import ExitStack
from pathlib import Path

from prefgen.errors import OutputError
from prefgen.files.atomic import atomic_write
from prefgen.files.json_output import write_json_array
from prefgen.flow.commit import check_committed
from prefgen.ledger.store import Ledger
from prefgen.paths import journal_of, ledger_beside, part_path


def part_files(output: Path, world_size: int) -> list[tuple[Path, Path]]:
    """(JSONL, ledger) of every rank, refusing when one is missing."""
    parts = []
    for rank in range(world_size):
        part = part_path(output, rank, world_size)
        ledger = ledger_beside(part)
        if not ledger.exists():
            raise OutputError(
                f"part {rank} of {world_size} is missing: no ledger {ledger}",
                hint=f"run rank {rank} (prefgen generate ... --rank {rank} --world-size {world_size})",
            )
        parts.append((journal_of(part), ledger))
    return parts


def _check_part(rank: int, world_size: int, jsonl: Path, ledger: Ledger) -> dict:
    progress = ledger.progress()
    fingerprint = ledger.fingerprint()
    if (fingerprint["rank"], fingerprint["world_size"]) != (rank, world_size):
        raise OutputError(f"{ledger.path} belongs to rank {fingerprint['rank']} of {fingerprint['world_size']}")
    if (
        progress["units_total"] is None
        or progress["units_done"] < progress["units_total"]
        or progress["samples_complete"] < progress["samples_total"]
        or progress["units_failed"]
    ):
        raise OutputError(
            f"part {rank} of {world_size} is incomplete: {progress['units_done']} of "
            f"{progress['units_total']} units done, {progress['samples_complete']} of "
            f"{progress['samples_total']} samples complete, {progress['units_failed']} to retry",
            hint=f"run rank {rank} again to finish it (prefgen generate ... --rank {rank} --world-size {world_size})",
        )
    check_committed(ledger, jsonl)
    return {k: v for k, v in fingerprint.items() if k != "rank"}


def merge_parts(output: str, world_size: int) -> int:
    """Write `output` from the complete parts, lines in (sample, reject) order; return the count."""
    target = Path(output)
    if target.exists():
        raise OutputError(f"{target} already exists", hint="merge into a new path, or remove it first")
    with ExitStack() as stack:
        ledgers = []
        settings = None
        for rank, (jsonl, ledger_path) in enumerate(part_files(target, world_size)):
            ledger = Ledger(ledger_path, readonly=True)
            stack.callback(ledger.close)
            part_settings = _check_part(rank, world_size, jsonl, ledger)
            if settings is not None and part_settings != settings:
                raise OutputError(f"part {rank} was run with other settings than part 0")
            settings = part_settings
            ledgers.append(ledger)
        streams = [ledger.written_lines(order="sample") for ledger in ledgers]
        merged = heapq.merge(*streams, key=lambda row: (row["sample_index"], row["reject_index"]))
        lines = (row["line"].encode() for row in merged)
        if journal_of(target) != target:
            return write_json_array(target, lines, ".merging")
        count = 0
        with atomic_write(target, ".merging") as handle:
            for line in lines:
                handle.write(line)
                count += 1
    return count
