"""Step 8 of the flow: commit a judged batch to the JSONL and the ledger together.

The protocol that makes a crash at any moment recoverable:
1. append the batch's lines to the JSONL, flush and fsync;
2. in one ledger transaction, record the units and the JSONL's new committed length and
   SHA-256 (of everything prefgen has written to it).
A crash before 2 leaves bytes past the committed length: the next start truncates them, and
the units, absent from the ledger, are generated again (with the same seeds, the same text).
A file shorter than the committed length, or whose bytes no longer hash to the ledger's
value, was changed behind prefgen's back and is refused; `prefgen repair` rebuilds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import orjson

from prefgen.config import execution_reward
from prefgen.errors import OutputError
from prefgen.flow.pairing import GOLD, MODEL, Pair, SamplePairs, pair_fields
from prefgen.ledger import keys
from prefgen.ledger.store import Ledger
from prefgen.runtime.faults import fault_point
from prefgen.units import CHOSEN, REJECTED, WRITTEN, Judged

log = logging.getLogger("prefgen")

REPAIR_HINT = "run `prefgen repair --output {path}` to rebuild it from the ledger"
_OWN_FIELDS = ("instruction", "input", "output")
_HASH_BLOCK = 1 << 20


def _line(record, chosen: str, rejected: str, tracing: dict) -> bytes:
    """A JSONL line: the pair, the record's extra fields, then where the pair came from."""
    line = {"instruction": record.instruction, "input": record.input, "chosen": chosen, "rejected": rejected}
    line.update((k, v) for k, v in record.fields.items() if k not in _OWN_FIELDS and k not in line)
    line.update(sample_index=record.index, **tracing)
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def suspect_fields(suspect: str | None) -> dict:
    """A line's gold check (suspects.py): none when golds are not checked."""
    return {} if suspect is None else {"gold_suspect": bool(suspect), "gold_suspect_detail": suspect}


def output_line(item: Judged) -> bytes:
    """The JSONL line of a kept reject (--pairs gold): the gold is chosen."""
    tracing = {"reject_index": item.unit.reject_index, "seed": item.unit.seed}
    if item.verdict is not None:
        tracing.update(verdict=item.verdict.verdict, verdict_detail=item.verdict.detail)
    tracing.update(suspect_fields(item.suspect))
    return _line(item.unit.record, item.unit.record.output, item.sql, tracing)


def pair_line(sample: SamplePairs, pair: Pair) -> bytes:
    """The JSONL line of an on-policy pair, with both sides' attempts, seeds and verdicts."""
    fields = pair_fields(pair, sample.record.output, sample.answer, sample.scored)
    chosen, rejected = fields.pop("chosen"), fields.pop("rejected")
    return _line(sample.record, chosen, rejected, {**fields, **suspect_fields(sample.suspect)})


def sample_row(sample: SamplePairs) -> dict:
    """The ledger row of a sample whose pairs are formed (--pairs onpolicy)."""
    return {
        "sample_index": sample.record.index,
        "candidates": len(sample.candidates),
        "chosen_candidates": sample.count(CHOSEN),
        "rejected_candidates": sample.count(REJECTED),
        "pairs": len(sample.pairs),
        "fallback": int(sample.fallback),
    }


def unit_row(item: Judged) -> dict:
    """The ledger row of a judged unit (without its line position)."""
    answer, verdict = item.answer, item.verdict
    return {
        "sample_index": item.unit.sample_index,
        "reject_index": item.unit.reject_index,
        "seed": item.unit.seed,
        "status": item.status,
        "detail": item.detail,
        "record_hash": item.unit.record.hash,
        "sql": item.sql,
        "raw_answer": None if answer.oom else answer.text,
        "prompt_tokens": answer.prompt_tokens,
        "new_tokens": answer.new_tokens,
        "gen_seconds": answer.seconds,
        "source": answer.source,
        "truncated": None if answer.oom else int(answer.truncated),
        "role": item.role,
        "verdict": verdict and verdict.verdict,
        "verdict_detail": verdict and verdict.detail,
        "multiset_differs": verdict and int(verdict.multiset_differs),
        "order_differs": verdict and int(verdict.order_differs),
        "spider_correct": _score(verdict and verdict.spider),
        "bird_correct": _score(verdict and verdict.bird),
        "result_digest": (verdict and verdict.digest) or None,
        "reward": execution_reward(verdict and verdict.verdict),
        "variant": verdict and verdict.variant,
        "line_offset": None,
        "line_length": None,
        "line": None,
    }


def _score(score: bool | None) -> int | None:
    """An evaluator's score as the ledger holds it: 1 right, 0 wrong, NULL not scored."""
    return None if score is None else int(score)


def hash_range(path: Path, start: int, end: int) -> "hashlib._Hash":
    """SHA-256 of the bytes [start, end) of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            block = handle.read(min(_HASH_BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest


def check_committed(ledger: Ledger, path: Path) -> tuple[int, "hashlib._Hash"]:
    """Verify the file still holds exactly what the ledger committed; return (length, digest).

    Bytes past the committed length are allowed (an interrupted commit); the committed part
    must be there and hash to the ledger's value.
    """
    base = int(ledger.meta(keys.OUTPUT_BASE, "0"))
    committed = int(ledger.meta(keys.OUTPUT_COMMITTED, "0"))
    size = path.stat().st_size if path.exists() else 0
    if size < committed:
        raise OutputError(
            f"{path} is {size} bytes but the ledger has committed {committed}: it was "
            "truncated or replaced behind prefgen's back",
            hint=REPAIR_HINT.format(path=path),
        )
    digest = hash_range(path, base, committed) if path.exists() else hashlib.sha256()
    if digest.hexdigest() != ledger.meta(keys.OUTPUT_SHA256):
        raise OutputError(
            f"{path} no longer matches the ledger (its content was edited behind prefgen's back)",
            hint=REPAIR_HINT.format(path=path),
        )
    return committed, digest


class OutputJournal:
    """The JSONL output, kept in step with the ledger."""

    def __init__(self, ledger: Ledger, path: str | Path, db_field: str = "db_id"):
        self.ledger = ledger
        self.path = Path(path)
        self.db_field = db_field
        self.fd: int | None = None
        self.committed = 0
        self.digest = hashlib.sha256()

    def open(self) -> None:
        """Reconcile the file with the ledger (truncating an uncommitted tail) and open it."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if self.ledger.meta(keys.OUTPUT_COMMITTED) is None:
            # prefgen appends: whatever the file held before this ledger existed is left alone.
            self.ledger.update_meta(
                {
                    keys.OUTPUT_PATH: str(self.path.resolve()),
                    keys.OUTPUT_BASE: str(size),
                    keys.OUTPUT_COMMITTED: str(size),
                    keys.OUTPUT_SHA256: hashlib.sha256().hexdigest(),
                }
            )
        self._check_path()
        self.committed, self.digest = check_committed(self.ledger, self.path)
        if size > self.committed:
            log.warning(
                "%s: discarding %d uncommitted bytes left by an interrupted run", self.path, size - self.committed
            )
            os.truncate(self.path, self.committed)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _check_path(self) -> None:
        recorded = self.ledger.meta(keys.OUTPUT_PATH)
        if recorded != str(self.path.resolve()):
            raise OutputError(
                f"the ledger {self.ledger.path} belongs to the output {recorded}, not {self.path.resolve()}",
                hint="pass the --output the ledger was started with, or another --ledger",
            )

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def commit(
        self, run_id: int, items: list[Judged], samples: list[SamplePairs] = (), checked: list[dict] = ()
    ) -> None:
        """Write the batch's kept lines and the pairs of the samples it completes (--pairs
        onpolicy), then record it all in the ledger in one transaction, with the gold checks of
        the samples it completes (`checked`, suspects.py)."""
        rows, pairs, lines, offset = [], [], [], self.committed
        for item in items:
            row = unit_row(item)
            if item.status == WRITTEN:
                line = output_line(item)
                row.update(line_offset=offset, line_length=len(line), line=line.decode())
                lines.append(line)
                offset += len(line)
            rows.append(row)
        for sample in samples:
            for pair in sample.pairs:
                line = pair_line(sample, pair)
                pairs.append(
                    {
                        "sample_index": sample.record.index,
                        "pair_index": pair.index,
                        "chosen_source": GOLD if pair.chosen is None else MODEL,
                        "chosen_attempt": pair.chosen and pair.chosen.attempt,
                        "rejected_attempt": pair.rejected.attempt,
                        "line_offset": offset,
                        "line_length": len(line),
                        "line": line.decode(),
                    }
                )
                lines.append(line)
                offset += len(line)
        data = b"".join(lines)
        try:
            self._append(data)
            fault_point("after_jsonl_write")
            digest = self.digest.copy()
            digest.update(data)
            self.ledger.commit_units(
                run_id,
                rows,
                {keys.OUTPUT_COMMITTED: str(offset), keys.OUTPUT_SHA256: digest.hexdigest()},
                pairs,
                [sample_row(sample) for sample in samples],
                self.record_rows(items),
                checked,
            )
        except Exception:
            self._rollback()
            raise
        self.digest, self.committed = digest, offset
        fault_point("after_commit")

    def record_rows(self, items: list[Judged]) -> list[dict]:
        """The ledger's `samples` rows of the batch's records: question, gold and database."""
        rows = {}
        for item in items:
            record = item.unit.record
            if record.index not in rows:
                db = record.fields.get(self.db_field)
                rows[record.index] = {
                    "sample_index": record.index,
                    "db": db if isinstance(db, str) else None,
                    "instruction": record.instruction,
                    "input": record.input,
                    "gold": record.output,
                }
        return list(rows.values())

    def _append(self, data: bytes) -> None:
        """Append unbuffered and fsync, so nothing is left in a buffer to land after a rollback."""
        if not data:
            return
        try:
            # a fault here tears the batch: half of it is on disk when the process dies
            fault_point("mid_jsonl_write", before=lambda: self._write_all(data[: len(data) // 2]))
            self._write_all(data)
            os.fsync(self.fd)
        except OSError as exc:
            raise OutputError(
                f"cannot write to {self.path}: {exc.strerror or exc}",
                hint="free disk space or fix the disk, then run the same command again: nothing committed is lost",
            ) from exc

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def _rollback(self) -> None:
        """Drop uncommitted bytes so the file again ends at the committed length."""
        try:
            os.truncate(self.path, self.committed)
        except OSError:
            log.warning("%s: could not truncate the uncommitted tail; the next start will", self.path)
