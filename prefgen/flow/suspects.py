"""Step 7c of the flow: once all of a sample's answers are judged, is its gold worth a second look?

Golds are wrong more often than users assume (annotation errors, golds that return nothing),
and a wrong gold does the most harm where the gold is the chosen side (--pairs gold,
--fallback gold): the pair would prefer it over the model's right answers. Wherever answers are
executed (generate --db-root, `prefgen pair`, `prefgen verify`), a sample's gold is *suspect*
when
1. the gold itself fails on its database (the answers' verdict is `unverifiable`, `gold fails:
   <SQLite's message>`), or
2. more than --suspect-share of the sample's executed answers (and at least two) agree with each
   other on one result, and that result is one every selected evaluator scores wrong against
   the gold (`wrong_result` on the original database).

An executed answer is one whose result is known: a verdict with a result digest (the rows, as a
multiset, columns as given: sql/verdict.py), an `equivalent` one, or (gold mode) a reject that is
the gold query up to layout, which agrees with the gold. Answers the database variants told
apart from the gold (--db-variants) return the gold's own rows on the original: they agree with
the gold. Duplicates (--dedup-rejects) and answers without SQL are not executed and not counted.

--gold-suspect keep (the default) flags the sample and writes its pairs, each line carrying
`gold_suspect` and `gold_suspect_detail`; skip writes no pair for it and counts it. Either way
the ledger's `samples` table records the flag, and `prefgen ledger suspects` lists the golds.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from prefgen.units import EQUIVALENT, GOLD_FAILS, SAME_AS_GOLD, UNVERIFIABLE, WRONG_RESULT

MIN_AGREEING = 2  # one answer alone is no evidence against a gold


def suspicion(answers: Iterable[dict], share: float) -> str:
    """Why a sample's gold is suspect, from its answers' ledger rows (`status`, `verdict`,
    `verdict_detail`, `result_digest`, `variant`), or "" when nothing says so."""
    executed, wrong = 0, Counter()
    for row in answers:
        verdict, detail = row.get("verdict"), row.get("verdict_detail") or ""
        if verdict == UNVERIFIABLE and detail.startswith(GOLD_FAILS):
            return detail
        if row.get("status") == SAME_AS_GOLD or verdict == EQUIVALENT:
            executed += 1  # agrees with the gold
        elif verdict is not None and row.get("result_digest"):
            executed += 1
            if verdict == WRONG_RESULT and row.get("variant") is None:
                wrong[row["result_digest"]] += 1
    if not wrong:
        return ""
    _, agreeing = wrong.most_common(1)[0]
    if agreeing >= MIN_AGREEING and agreeing > share * executed:
        return f"{agreeing} of {executed} executed answers agree on one result the gold does not give"
    return ""


def gold_check(answers: Iterable[dict], mode: str, share: float) -> tuple[str | None, bool]:
    """A sample's gold check under --gold-suspect `mode` ("": golds not checked): why its gold is
    suspect ("" when it is not, None when not checked), and whether it therefore gives no pair."""
    if not mode:
        return None, False
    suspect = suspicion(answers, share)
    return suspect, bool(suspect) and mode == "skip"
