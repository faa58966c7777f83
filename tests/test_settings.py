"""resume/: a run's settings resolved against what its ledger recorded, once, in one place; the
fingerprint of resolved settings, and one diff of two fingerprints naming what changed."""

import pytest
from conftest import DB_ROOT

from prefgen.config import DEFAULT_DB_VARIANTS, DEFAULT_EVALUATOR, DEFAULT_GOLD_SUSPECT, CheckPolicy, GenerateConfig
from prefgen.errors import SettingsMismatch
from prefgen.ledger import keys
from prefgen.ledger.store import Ledger
from prefgen.resume.fingerprint import differences, fingerprint_of, judging_only
from prefgen.resume.settings import made_before, resolve, resolve_judging, resume


def config(**flags) -> GenerateConfig:
    return GenerateConfig.from_flags(base_model="m", sft_data="d.json", output="o.jsonl", **flags)


def test_flags_left_out_are_unset_until_resolved():
    cfg = config(db_root=str(DB_ROOT))
    assert (cfg.evaluator, cfg.db_variants, cfg.gold_suspect, cfg.drop_timeout) == (None, None, None, None)
    with pytest.raises(ValueError, match="resolved"):
        fingerprint_of(cfg)  # an unresolved setting never reaches a ledger


def test_a_new_ledger_gets_todays_defaults_and_an_old_one_its_own_rule():
    cfg = config(db_root=str(DB_ROOT))
    new = resolve(cfg, None)
    assert (new.evaluator, new.db_variants, new.gold_suspect) == (DEFAULT_EVALUATOR, DEFAULT_DB_VARIANTS, "keep")
    assert (new.drop_timeout, new.drop_unverifiable) == (False, False)
    old = resolve(cfg, {"db_root": "x"})  # executed SQL before evaluators, variants and gold checks
    assert made_before({"db_root": "x"}) == {"evaluator", "db_variants", "gold_suspect"}
    assert (old.evaluator, old.db_variants, old.gold_suspect) == ("lenient", 0, "")
    assert "evaluator" not in fingerprint_of(old) and "db_variants" not in fingerprint_of(old)
    given = resolve(config(db_root=str(DB_ROOT), evaluator="spider", db_variants=1), {"db_root": "x"})
    assert (given.evaluator, given.db_variants) == ("spider", 1)  # what is given is never replaced


def test_on_policy_drops_what_cannot_be_judged_unless_told_otherwise():
    policy = resolve_judging(CheckPolicy(str(DB_ROOT), drop_timeout=None, drop_unverifiable=False), onpolicy=True)
    assert (policy.drop_timeout, policy.drop_unverifiable) == (True, False)
    assert resolve_judging(CheckPolicy(str(DB_ROOT)), onpolicy=False).drop_timeout is False
    assert CheckPolicy(str(DB_ROOT)).gold_suspect == DEFAULT_GOLD_SUSPECT  # built directly: today's defaults


def test_differences_name_a_left_out_setting_by_its_default():
    assert differences({"seed": 1}, {"seed": 1, "engine": "vllm"}) == ["engine (ledger: 'transformers', now: 'vllm')"]
    assert differences({"seed": 1}, {"seed": 2}, label="old") == ["seed (old: 1, now: 2)"]
    assert judging_only({"evaluator", "db_variants"}) and not judging_only({"seed", "evaluator"})


def test_resume_records_then_refuses_and_an_empty_ledger_is_replaced(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    try:
        first = resume(config(seed=1, db_root=str(DB_ROOT)), ledger)
        assert ledger.fingerprint() == fingerprint_of(first) and ledger.meta(keys.GENERATION_IDENTITY)
        second = resume(config(seed=2, db_root=str(DB_ROOT)), ledger)  # no unit committed: replaced
        assert ledger.fingerprint()["seed"] == 2 and second.seed == 2
        ledger.db["units"].insert({"sample_index": 0, "reject_index": 0, "seed": 2, "status": "written"})
        with pytest.raises(SettingsMismatch, match=r"evaluator \(ledger: 'both', now: 'bird'\).*judging only"):
            resume(config(seed=2, db_root=str(DB_ROOT), evaluator="bird"), ledger)
        with pytest.raises(SettingsMismatch, match="they decide the generated text"):
            resume(config(seed=3, db_root=str(DB_ROOT)), ledger)
    finally:
        ledger.close()
