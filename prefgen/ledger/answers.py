"""The answers a ledger stores, as --reuse-answers and the summaries read them."""

from __future__ import annotations

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


def stored_answers(ledger: Ledger) -> dict[tuple[int, int], dict]:
    """Every stored answer by (sample, reject), for --reuse-answers (`truncated` NULL in rows
    made before units.truncated)."""
    truncated = "truncated" if "truncated" in ledger.db["units"].columns_dict else "null as truncated"
    rows = ledger.db.query(
        "select sample_index, reject_index, seed, status, record_hash, raw_answer, prompt_tokens,"
        f" new_tokens, gen_seconds, {truncated} from units where raw_answer is not null"
    )
    return {(row["sample_index"], row["reject_index"]): row for row in rows}
