"""The answers a ledger stores, as --reuse-answers and the summaries read them."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from prefgen.errors import LedgerError
from prefgen.ledger.store import Ledger
from prefgen.units import GENERATED, REGENERATED, REUSED


def answer_sources(ledger: Ledger) -> dict:
    """Answers generated, reused and regenerated at a larger cap, and the generation seconds
    the reused ones had cost the run that made them (the GPU time reuse saved); a ledger
    before `source`: all generated."""
    has_source = "source" in ledger.db["units"].columns_dict
    source = "coalesce(source, 'generated')" if has_source else "'generated'"
    sql = (
        f"select count(*) - coalesce(sum({source} in ('{REUSED}', '{REGENERATED}')), 0) as generated,"
        f" coalesce(sum({source} = '{REUSED}'), 0) as reused,"
        f" coalesce(sum({source} = '{REGENERATED}'), 0) as regenerated,"
        f" coalesce(sum(case when {source} = '{REUSED}' then gen_seconds end), 0.0) as saved_s"
        " from units where raw_answer is not null"
    )
    row = next(ledger.db.query(sql))
    return {
        GENERATED: row["generated"],
        REUSED: row["reused"],
        REGENERATED: row["regenerated"],
        "saved_gpu_s": round(row["saved_s"], 3),
    }


class StoredAnswers:
    """An earlier run's stored answers by (sample, reject), for --reuse-answers, read as asked:
    the samples around the one asked for (CHUNK at a time, in one query), the last CACHE chunks
    kept. A run reusing millions of answers holds at most CHUNK x CACHE samples' answers, and so
    does each of a Ray run's workers. The ledger is opened for each read and closed after it, as
    every reader does, so the earlier run's own writer is never kept waiting; a ledger moved,
    removed or replaced since the run checked it (another file at its path) is an error, never
    read (`truncated` is NULL in rows made before units.truncated)."""

    CHUNK = 512  # samples read at once
    CACHE = 8  # chunks kept

    def __init__(self, path: Path):
        self.path = path
        self.identity = file_identity(path)  # the file the run's settings were checked against
        self.chunks: OrderedDict[int, dict[tuple[int, int], dict]] = OrderedDict()
        self.reads = 0

    def get(self, key: tuple[int, int]) -> dict | None:
        """The stored answer of unit `key`, None where there is none."""
        chunk = key[0] // self.CHUNK
        rows = self.chunks.get(chunk)
        if rows is None:
            rows = self.chunks[chunk] = self.read(chunk)
            if len(self.chunks) > self.CACHE:
                self.chunks.popitem(last=False)
        else:
            self.chunks.move_to_end(chunk)
        return rows.get(key)

    def read(self, chunk: int) -> dict[tuple[int, int], dict]:
        self.reads += 1
        if file_identity(self.path) != self.identity:
            raise LedgerError(
                f"--reuse-answers: {self.path} was moved, removed or replaced during this run",
                hint="keep the earlier run's ledger in place until this run ends (its own run may go on),"
                " then run the same command again to resume",
            )
        ledger = Ledger(self.path, readonly=True)
        try:
            truncated = "truncated" if "truncated" in ledger.db["units"].columns_dict else "null as truncated"
            rows = ledger.db.query(
                "select sample_index, reject_index, seed, status, record_hash, raw_answer, prompt_tokens,"
                f" new_tokens, gen_seconds, {truncated} from units where raw_answer is not null"
                " and sample_index >= ? and sample_index < ?",
                [chunk * self.CHUNK, (chunk + 1) * self.CHUNK],
            )
            return {(row["sample_index"], row["reject_index"]): row for row in rows}
        finally:
            ledger.close()


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None when there is none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino
