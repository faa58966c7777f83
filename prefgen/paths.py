"""The file names prefgen derives from the paths users give: a run's ledger beside its output,
the JSON Lines journal of a `.json` output, the per-rank parts of a split run. Every command
that asks "which file does this path name" asks here."""

from __future__ import annotations

from pathlib import Path

from prefgen.errors import LedgerError

LEDGER_SUFFIX = ".ledger.sqlite"
JSON_SUFFIX = ".json"  # an output with this suffix gets a JSON array; the run appends to its journal
JOURNAL_SUFFIX = ".journal.jsonl"


def part_path(path: Path, rank: int, world_size: int) -> Path:
    """`pairs.jsonl` -> `pairs.rank1-of-4.jsonl` when the run is split over processes."""
    if world_size == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}-of-{world_size}{path.suffix}")


def journal_of(output: str | Path) -> Path:
    """The JSON Lines file a run appends to: the output itself, or for a `.json` output (which
    holds one JSON array, written whole) the journal beside it, `pairs.json` -> `pairs.journal.jsonl`."""
    output = Path(output)
    if output.suffix != JSON_SUFFIX:
        return output
    return output.with_name(output.stem + JOURNAL_SUFFIX)


def output_of_journal(path: str | Path) -> Path | None:
    """The `.json` output whose journal `path` is (`pairs.journal.jsonl` -> `pairs.json`), or None."""
    path = Path(path)
    if not path.name.endswith(JOURNAL_SUFFIX) or path.name == JOURNAL_SUFFIX:
        return None
    return path.with_name(path.name[: -len(JOURNAL_SUFFIX)] + JSON_SUFFIX)


def ledger_beside(output: str | Path) -> Path:
    """The ledger generate keeps for an --output: OUTPUT.ledger.sqlite (`pairs.json.ledger.sqlite`
    for a `.json` output too, beside both the array and its journal)."""
    return Path(str(output) + LEDGER_SUFFIX)


def run_output(path: str | Path) -> Path:
    """The --output of the run a path names: the path itself, or the `.json` output whose journal it is."""
    path = Path(path)
    json_output = output_of_journal(path)
    if json_output and not ledger_beside(path).is_file() and ledger_beside(json_output).is_file():
        return json_output
    return path


def _is_ledger(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\0"


def ledger_of(path: str | Path) -> Path:
    """The ledger a path names: the ledger itself, or the output of a run (for a `.json` output
    the array or its journal), whose ledger is OUTPUT.ledger.sqlite as generate names it. Raises
    LedgerError when there is none."""
    path = Path(path)
    if _is_ledger(path):
        return path
    beside = ledger_beside(run_output(path))
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
