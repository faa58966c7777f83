"""flow/settle.py on its own: a sample is settled when its last unit in flight is judged; its
further attempts, gold check and on-policy pairs come from its units, held back where the gold
is checked. No engine and no CLI: judged units in, what to commit out."""

from pathlib import Path

from conftest import GOLD, RIGHT, WRONG

from prefgen.config import GenerateConfig
from prefgen.flow.commit import unit_row
from prefgen.flow.settle import OpenSamples, attempt_rule, check_gold, flagged, further_attempts
from prefgen.ledger.store import Ledger
from prefgen.resume.settings import resolve
from prefgen.units import CANDIDATE, GOLD_SUSPECT, WRITTEN, Answer, Judged, Record, Verdict, WorkUnit

DB = str(Path(__file__).resolve().parent.parent / "examples" / "spider_en" / "db")


def config(**flags) -> GenerateConfig:
    return resolve(GenerateConfig.from_flags(base_model="m", sft_data="d", output="o", **flags), None)


def record(index: int) -> Record:
    return Record(index, {"instruction": f"q{index}", "output": GOLD, "db_id": "department_store"}, f"h{index}")


def judged(sample: int, attempt: int, status: str = WRITTEN, verdict: Verdict | None = None, sql: str = WRONG):
    unit = WorkUnit(record(sample), attempt, 1000 * sample + attempt)
    return Judged(unit, Answer(sql, 3, 2, 0.1), status, sql, verdict=verdict, detail=verdict.detail if verdict else "")


def wrong(digest: str) -> Verdict:
    return Verdict("wrong_result", "other rows", spider=False, bird=False, digest=digest)


def samples(tmp_path, cfg) -> OpenSamples:
    return OpenSamples(cfg, Ledger(tmp_path / "l.sqlite"), attempt_rule(cfg))


def test_without_tracking_a_batch_is_committed_as_it_is(tmp_path):
    cfg = config(num_rejects=2)
    open_samples = samples(tmp_path, cfg)
    batch = [judged(0, 0), judged(0, 1)]
    settled = open_samples.settle(batch)
    assert settled.items == batch and not settled.paired and not settled.further and not settled.checked


def test_a_checked_gold_holds_its_sample_back_until_its_last_unit_and_flags_every_line(tmp_path):
    cfg = config(num_rejects=3, db_root=DB, gold_suspect="skip")
    open_samples = samples(tmp_path, cfg)
    units = list(open_samples.tracked([judged(0, a).unit for a in range(3)]))
    assert len(units) == 3 and open_samples.open[0][1] == 3
    first = open_samples.settle([judged(0, 0, verdict=wrong("d1")), judged(0, 1, verdict=wrong("d1"))])
    assert first.items == [] and len(open_samples.held[0]) == 2  # held back: one unit still in flight
    last = open_samples.settle([judged(0, 2, verdict=wrong("d1"))])
    assert [item.status for item in last.items] == [GOLD_SUSPECT] * 3  # skip: suspect rejects not written
    assert all(item.suspect.startswith("3 of 3 executed answers agree") for item in last.items)
    assert last.checked == [{"sample_index": 0, "gold_suspect": 1, "suspect_detail": last.items[0].suspect}]
    assert last.paired[0].skipped and 0 not in open_samples.open


def test_further_attempts_follow_the_attempts_rule(tmp_path):
    cfg = config(num_rejects=2, max_attempts=4)
    rule = attempt_rule(cfg)
    rows = {0: unit_row(judged(0, 0)), 1: unit_row(judged(0, 1, status="same_as_gold"))}
    assert further_attempts(rule, rows).further == [2]  # one written of two: one more attempt
    open_samples = samples(tmp_path, cfg)
    list(open_samples.tracked([judged(0, 0).unit, judged(0, 1).unit]))
    settled = open_samples.settle([judged(0, 0), judged(0, 1, status="same_as_gold")])
    assert [(u.sample_index, u.reject_index, u.seed) for u in settled.further] == [(0, 2, cfg.seed + 2)]
    assert len(settled.items) == 2  # no gold check: committed now, the next wave tracked
    assert open_samples.open[0][1] == 1


def test_on_policy_pairs_are_formed_once_the_sample_is_complete(tmp_path):
    cfg = config(num_rejects=1, db_root=DB, pairs="onpolicy")
    open_samples = samples(tmp_path, cfg)
    right = Verdict("equivalent", "same rows", spider=True, bird=True, digest="g")
    items = [Judged(judged(0, 0).unit, Answer(RIGHT, 3, 2, 0.1), CANDIDATE, RIGHT, verdict=right, role="chosen")]
    settled = open_samples.settle(items)
    assert settled.items == items and len(settled.paired) == 1
    assert settled.paired[0].pairs == []  # one correct answer, no wrong one: no pair (--fallback none)
    assert settled.checked == [{"sample_index": 0, "gold_suspect": 0, "suspect_detail": None}]


def test_the_gold_check_and_its_flag(tmp_path):
    cfg = config(num_rejects=2, db_root=DB)  # --gold-suspect keep, the default
    rows = [unit_row(judged(0, 0, verdict=wrong("d1"))), unit_row(judged(0, 1, verdict=wrong("d1")))]
    suspect, skip = check_gold(cfg, rows)
    assert suspect.startswith("2 of 2") and not skip
    item = judged(0, 0)
    assert flagged(item, suspect, skip).status == WRITTEN and flagged(item, suspect, skip).suspect == suspect
    assert flagged(item, None, False) is item
    assert check_gold(config(num_rejects=2), rows) == (None, False)  # no --db-root: not checked
