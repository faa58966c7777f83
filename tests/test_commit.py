"""flow/commit.py on its own: a settled batch becomes lines and ledger rows together, or neither."""

import orjson
import pytest
from conftest import GOLD, WRONG, query

from prefgen.flow.commit import OutputJournal
from prefgen.ledger.store import Ledger
from prefgen.units import Answer, Judged, Record, WorkUnit


def judged(sample: int, attempt: int, status: str = "written") -> Judged:
    record = Record(sample, {"instruction": "q", "output": GOLD, "db_id": "department_store"}, f"h{sample}")
    return Judged(WorkUnit(record, attempt, 1000 * sample + attempt), Answer(WRONG, 3, 2, 0.1), status, WRONG)


def test_a_commit_writes_the_lines_and_their_rows_together(tmp_path):
    out, ledger = tmp_path / "out.jsonl", Ledger(tmp_path / "l.sqlite")
    journal = OutputJournal(ledger, out, "db_id")
    try:
        journal.open()
        journal.commit(1, [judged(0, 0), judged(0, 1, "same_as_gold"), judged(1, 0)])
    finally:
        journal.close()
        ledger.close()
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(line["sample_index"], line["reject_index"], line["rejected"]) for line in lines] == [
        (0, 0, WRONG),
        (1, 0, WRONG),
    ]
    rows = query(tmp_path / "l.sqlite", "select * from units order by sample_index, reject_index")
    assert [row["status"] for row in rows] == ["written", "same_as_gold", "written"]
    assert sum(row["line_length"] or 0 for row in rows) == out.stat().st_size
    meta = {r["key"]: r["value"] for r in query(tmp_path / "l.sqlite", "select * from meta")}
    assert int(meta["output_committed"]) == out.stat().st_size
    samples = query(tmp_path / "l.sqlite", "select sample_index, db from samples order by sample_index")
    assert samples == [{"sample_index": 0, "db": "department_store"}, {"sample_index": 1, "db": "department_store"}]


def test_a_commit_the_ledger_refuses_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    out, ledger = tmp_path / "out.jsonl", Ledger(tmp_path / "l.sqlite")
    journal = OutputJournal(ledger, out, "db_id")
    try:
        journal.open()
        journal.commit(1, [judged(0, 0)])
        size = out.stat().st_size

        def refuse(*args, **kwargs):
            raise RuntimeError("the ledger's transaction failed")

        monkeypatch.setattr(ledger, "commit_units", refuse)
        with pytest.raises(RuntimeError):
            journal.commit(1, [judged(1, 0)])
        assert out.stat().st_size == size  # the uncommitted tail is gone
    finally:
        journal.close()
        ledger.close()
    assert len(query(tmp_path / "l.sqlite", "select * from units")) == 1
