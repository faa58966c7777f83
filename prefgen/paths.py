"""The file names prefgen derives from the paths users give: a run's ledger beside its output,
the per-rank parts of a split run."""

from __future__ import annotations

from pathlib import Path

from prefgen.errors import LedgerError

LEDGER_SUFFIX = ".ledger.sqlite"


def part_path(path: Path, rank: int, world_size: int) -> Path:
    """`pairs.jsonl` -> `pairs.rank1-of-4.jsonl` when the run is split over processes."""
    if world_size == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}-of-{world_size}{path.suffix}")


def ledger_of(path: str | Path) -> Path:
    """The ledger a path names: the ledger itself, or the output JSONL of a run (whose ledger
    is OUTPUT.ledger.sqlite, as generate names it). Raises LedgerError when there is none."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as handle:
            if handle.read(16) == b"SQLite format 3\0":
                return path
    beside = Path(str(path) + LEDGER_SUFFIX)
    if beside.is_file():
        return beside
    if path.is_file():
        raise LedgerError(
            f"{path} is neither a prefgen ledger nor an output with a ledger beside it ({beside} does not exist)",
            hint="give the ledger (--ledger of the run), or the --output of the run",
        )
    parts = sorted(path.parent.glob(f"{path.stem}.rank*-of-*{path.suffix}{LEDGER_SUFFIX}"))
    hint = f"a split run has one ledger per rank, such as {parts[0]}" if parts else "check the path"
    raise LedgerError(f"{path}: no such ledger or output", hint=hint)
