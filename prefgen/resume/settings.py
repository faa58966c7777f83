"""A run's settings resolved against what its ledger recorded, once, before the run starts.

Four judging settings have no fixed default: left unset, --evaluator, --db-variants and
--gold-suspect take today's default on a new ledger and the rule a ledger was made with when it
executed SQL before they existed (fingerprint.LEGACY); --drop-timeout / --drop-unverifiable
default to dropping with on-policy pairs and keeping otherwise. `resolve_judging` is the one
place where "unset" becomes a value, for generate, verify and pair alike; `resume` then refuses
a run whose fingerprint or generation identity differs from its ledger's.
"""

from __future__ import annotations

import dataclasses
import logging

from prefgen.config import (
    DEFAULT_DB_VARIANTS,
    DEFAULT_EVALUATOR,
    DEFAULT_GOLD_SUSPECT,
    LENIENT,
    CheckPolicy,
    GenerateConfig,
)
from prefgen.errors import SettingsMismatch
from prefgen.ledger import keys
from prefgen.ledger.store import Ledger
from prefgen.resume.fingerprint import LEGACY, changed, differences, fingerprint_of, judging_only
from prefgen.resume.identity import check_identity

log = logging.getLogger("prefgen")

DEFAULTS = {"evaluator": DEFAULT_EVALUATOR, "db_variants": DEFAULT_DB_VARIANTS, "gold_suspect": DEFAULT_GOLD_SUSPECT}


def made_before(stored: dict | None) -> frozenset[str]:
    """The settings a ledger's run predates: it executed SQL, and its fingerprint lacks them."""
    if not stored or "db_root" not in stored:
        return frozenset()
    return frozenset(name for name in DEFAULTS if name not in stored)


def resolve_judging(check: CheckPolicy, onpolicy: bool, before: frozenset[str] = frozenset()) -> CheckPolicy:
    """The judging settings with every unset one given its value (the module's docstring)."""
    values = {
        name: LEGACY[name] if name in before else default
        for name, default in DEFAULTS.items()
        if getattr(check, name) is None
    }
    values.update((name, onpolicy) for name in ("drop_timeout", "drop_unverifiable") if getattr(check, name) is None)
    return dataclasses.replace(check, **values) if values else check


def resolve(cfg: GenerateConfig, stored: dict | None) -> GenerateConfig:
    """`cfg` resolved against a ledger's recorded fingerprint (None: a new ledger)."""
    return dataclasses.replace(cfg, check=resolve_judging(cfg.check, cfg.onpolicy, made_before(stored)))


def resume(cfg: GenerateConfig, ledger: Ledger) -> GenerateConfig:
    """The settings of a run over `ledger`: resolved, then checked against what the ledger
    recorded (recorded now, on a new ledger): the fingerprint, the generation identity and the
    judging settings themselves."""
    previous = ledger.fingerprint()
    empty = previous is not None and not ledger.holds_work()
    stored = None if empty else previous  # a start that failed before committing anything: replaced
    cfg = resolve(cfg, stored)
    now = fingerprint_of(cfg)
    if empty and previous != now:
        cfg = forget_raise(cfg, ledger)
    check_fingerprint(ledger, stored, now, replacing=previous)
    check_identity(ledger, cfg, replace=stored is None)  # what is at the model and adapter paths, not only the paths
    note_verdict_rule(cfg, ledger)
    return cfg


def note_verdict_rule(cfg: GenerateConfig, ledger: Ledger) -> None:
    """Record the rule verdicts on database variants follow; a ledger judged on variants before
    it is resumed, saying that its earlier verdicts keep the rule they were made with."""
    from prefgen.sql.variants import VERDICT_RULE

    if not cfg.db_root or ledger.meta(keys.VERDICT_RULE) == VERDICT_RULE:
        return
    if cfg.db_variants and cfg.evaluator != LENIENT and ledger.holds_work():
        log.warning(
            "%s was judged on database variants before each evaluator was scored over the whole suite: its"
            " units judged so far keep their verdicts, the rest follow the suite rule; to judge every unit"
            " alike, run into a new --output with --reuse-answers %s",
            ledger.path,
            ledger.path,
        )
    ledger.update_meta({keys.VERDICT_RULE: VERDICT_RULE})


def forget_raise(cfg: GenerateConfig, ledger: Ledger) -> GenerateConfig:
    """A ledger taken over with other settings is no longer a raised cap's: the answers of the
    run it had moved aside are not reused (unless asked for again with --reuse-answers)."""
    raised = ledger.meta(keys.RAISED_FROM)
    if not raised:
        return cfg
    ledger.update_meta({keys.RAISED_FROM: ""})
    return dataclasses.replace(cfg, reuse_answers="") if cfg.reuse_answers == raised else cfg


def check_fingerprint(ledger: Ledger, stored: dict | None, now: dict, replacing: dict | None = None) -> None:
    """Record the fingerprint on first use; afterwards refuse a run whose settings differ. A
    ledger that holds no committed unit (`stored` None, `replacing` its fingerprint) takes the new
    settings, said in one line."""
    if stored is None:
        if replacing is not None and replacing != now:
            log.warning(
                "%s holds no committed unit: started again with these settings (%s)",
                ledger.path,
                "; ".join(differences(replacing, now)),
            )
        ledger.update_meta({keys.FINGERPRINT: now})
        return
    differing = differences(stored, now)
    if not differing:
        return
    same = judging_only(changed(stored, now))
    raise SettingsMismatch(
        f"{ledger.path} was started with other settings: "
        + "; ".join(differing)
        + (" (judging only: same answers)" if same else " (they decide the generated text)"),
        hint="run with the ledger's settings, or pass a new --output (or --ledger) to start a separate run"
        + (f", with --reuse-answers {ledger.path} to judge its answers anew, ungenerated" if same else ""),
    )
