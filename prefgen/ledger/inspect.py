"""Inspection: read a ledger (read-only, safe while a run writes it) and summarise it; it never
writes (`prefgen ledger retry` is the Ledger's own `mark_retry`).

`status_data` returns the stable JSON document of `prefgen ledger status --json`; the
`format_*` functions render text that fits an 80-column terminal (long lines wrapped, never
cut), with the control characters of the model's text escaped (`printable`).

A `runs` row whose status is `running` belongs to a live process only while that process holds
the ledger's lock (prefgen.runtime.lock): when it does not, the run died (kill -9, a crash, the
machine went down) and is shown `crashed`, with no ETA, without writing the ledger (the next
`prefgen generate` records it so).
"""

from __future__ import annotations

import textwrap

import orjson

from prefgen.ledger.answers import answer_sources
from prefgen.ledger.store import Ledger
from prefgen.ledger.views import RECENT_MINUTES
from prefgen.units import GENERATED, REGENERATED, REUSED

# the C0 and C1 control characters but newline and tab, as Python writes them in a repr
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if chr(c) not in "\n\t"}
_CONTROL.update({ord("\r"): "\\r"})


def printable(text: str) -> str:
    """Text for a terminal: control characters (NUL, backspace, escape sequences, ...) written
    as escapes (\\x00, \\x08, \\x1b), newlines and tabs kept."""
    return text.translate(_CONTROL)


def wrapped(line: str, indent: str = "      ", width: int = 80) -> list[str]:
    """A line too long for the terminal, wrapped onto indented lines (nothing is cut)."""
    return textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False) or [""]


def human_number(value: float) -> str:
    """1234 -> 1.2k, 0.5 -> 0.50."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.2f}" if value and abs(value) < 10 and value != int(value) else f"{value:.0f}"


def human_duration(seconds: float | None) -> str:
    """3h12m, 4m05s, 12s; '-' when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def status_data(path: str, recent_minutes: int = RECENT_MINUTES) -> dict:
    """Everything `ledger status` shows, as one JSON-ready dict with stable keys, read from the
    ledger's views (those `prefgen browse` shows)."""
    ledger = Ledger(path, readonly=True)
    try:
        progress = ledger.progress()
        speed = ledger.speed(recent_minutes)
        counts = ledger.status_counts()
        runs = ledger.run_history()
        rows = ledger.runs()
        alive = mark_crashed(runs, rows, ledger.reader)
        partial = ledger.partial_samples()
        verdicts = ledger.verdict_counts()
        overall = ledger.totals()
        last_error = latest_error(ledger)
        settings = orjson.loads(rows and rows[-1]["settings"] or "{}")
        fingerprint = ledger.fingerprint() or {}
        mode = fingerprint.get("pairs", "gold")
        paired = paired_summary(ledger.db) if mode == "onpolicy" else None
        answers = answer_sources(ledger)
        golds = golds_data(ledger, fingerprint)
    finally:
        ledger.close()
    samples_total = progress["samples_total"] or 0
    return {
        "ledger": str(path),
        "units": {
            "total": progress["units_total"] or 0,
            "done": progress["units_done"],
            "remaining": speed["remaining"],
            "failed": progress["units_failed"],
            "by_status": counts,
            "by_verdict": verdicts,
        },
        "samples": {
            "total": samples_total,
            "complete": progress["samples_complete"],
            "partial": partial,
            "pending": max(samples_total - progress["samples_complete"] - partial, 0),
        },
        "lines_written": progress["lines_written"],
        "pairs": _pairs_data(mode, paired),
        "tokens": {"prompt": overall["prompt_tokens"], "generated": overall["new_tokens"]},
        "answers": answers,
        "golds": golds,
        "throughput": {
            "units_per_s": speed["units_per_s"],
            "tokens_per_s": speed["tokens_per_s"],
            "recent_minutes": recent_minutes,
            "recent_units_per_s": speed["recent_units_per_s"],
            "recent_tokens_per_s": speed["recent_tokens_per_s"],
        },
        "eta_s": speed["eta_s"] if alive or not speed["remaining"] else None,  # no run: no ETA
        "last_update": progress["last_update"],
        "runs": runs,
        "last_error": last_error,
        "settings": settings,
    }


def mark_crashed(history: list[dict], rows: list[dict], reader) -> bool:
    """Show as `crashed` (stop reason `the process died`, as the next run records it) the runs of
    `history` (run_history rows) that say `running` but whose process no longer holds the
    ledger's lock (`reader`: what the lock told when the ledger was opened); `rows` are the
    `runs` rows, with pid and host. Returns whether a run is alive."""
    by_id = {row["id"]: row for row in rows}
    alive = False
    for run in history:
        if run["status"] != "running":
            continue
        row = by_id.get(run["id"], {})
        if reader is not None and reader.holds(row.get("pid"), row.get("host")):
            alive = True
        else:
            run["status"], run["stop_reason"] = "crashed", "the process died"
    return alive


def paired_summary(db) -> dict:
    """--pairs onpolicy: what the model's own answers gave, over the samples paired so far."""
    return next(
        db.query(
            "select count(*) as samples, coalesce(sum(chosen_candidates > 0), 0) as with_correct,"
            " coalesce(sum(chosen_candidates = 0), 0) as without_correct,"
            " coalesce(sum(rejected_candidates = 0), 0) as without_wrong,"
            " coalesce(sum(pairs), 0) as pairs, coalesce(sum(fallback), 0) as fallbacks,"
            " coalesce(sum(pairs > 0), 0) as with_pairs from paired_samples"
        )
    )


def gold_checks(db) -> dict | None:
    """Samples whose gold was checked, and how many of those are suspect (suspects.py); None
    for a ledger made before golds were checked."""
    if "gold_suspect" not in db["samples"].columns_dict:
        return None
    sql = "select count(gold_suspect) as checked, coalesce(sum(gold_suspect), 0) as suspect from samples"
    return next(db.query(sql))


def suspects(db) -> list[dict]:
    """The samples whose gold is suspect, with their question, gold, database and why."""
    if "gold_suspect" not in db["samples"].columns_dict:
        return []
    sql = (
        "select sample_index, db, instruction, input, gold, suspect_detail from samples"
        " where gold_suspect = 1 order by sample_index"
    )
    return list(db.query(sql))


def golds_data(ledger: Ledger, fingerprint: dict) -> dict | None:
    """The gold checks (suspects.py): samples checked, suspect, and skipped (no pair) under
    --gold-suspect skip; None when the run (its fingerprint) did not check golds."""
    checks, mode = gold_checks(ledger.db), fingerprint.get("gold_suspect")
    if checks is None or mode is None:
        return None
    skipped = checks["suspect"] if mode == "skip" else 0
    return {"mode": mode, "checked": checks["checked"], "suspect": checks["suspect"], "skipped": skipped}


def golds_line(golds: dict) -> str:
    """The line of `ledger status` and of generate's summary on the gold checks."""
    skipped = f", {golds['skipped']} skipped (no pair)" if golds["mode"] == "skip" else ""
    hint = ": `prefgen ledger suspects` lists them" if golds["suspect"] else ""
    return f"Golds    {golds['checked']} checked, {golds['suspect']} suspect{skipped}{hint}"


def _pairs_data(mode: str, paired: dict | None) -> dict:
    """The pair mode, and with on-policy pairs what the model's own answers told about it."""
    if paired is None:
        return {"mode": mode}
    samples = paired["samples"]
    return {
        "mode": mode,
        "samples_paired": samples,
        "samples_with_correct": paired["with_correct"],
        "pass_at_k": paired["with_correct"] / samples if samples else None,
        "samples_without_correct": paired["without_correct"],
        "samples_without_wrong": paired["without_wrong"],
        "samples_with_pairs": paired["with_pairs"],
        "pairs": paired["pairs"],
        "fallbacks": paired["fallbacks"],
    }


def format_status(data: dict) -> str:
    """The one-screen text of `prefgen ledger status`."""
    units, samples, speed = data["units"], data["samples"], data["throughput"]
    percent = f" ({100 * units['done'] / units['total']:.1f}%)" if units["total"] else ""
    lines = [
        f"Ledger   {data['ledger']}",
        f"Units    {units['done']} / {units['total']} done{percent}, {units['failed']} to retry",
        f"Samples  {samples['complete']} complete, {samples['partial']} partial, "
        f"{samples['pending']} pending (of {samples['total']})",
        "Status   " + ", ".join(f"{k} {v}" for k, v in sorted(units["by_status"].items())),
        f"Tokens   {human_number(data['tokens']['generated'])} generated, "
        f"{human_number(data['tokens']['prompt'])} prompt",
        f"Speed    {_speed(speed['units_per_s'], speed['tokens_per_s'])} overall; "
        f"{_speed(speed['recent_units_per_s'], speed['recent_tokens_per_s'])} last {speed['recent_minutes']}m",
        f"ETA      {human_duration(data['eta_s'])}",
    ]
    if data["eta_s"] is None and units["remaining"]:
        lines[-1] += " (no run is running: the same `prefgen generate` command resumes it)"
    if data["answers"]["reused"] or data["answers"]["regenerated"]:  # --reuse-answers
        lines.insert(5, reuse_line(data["answers"]))
    if data["golds"]:
        lines.insert(4, golds_line(data["golds"]))
    if units["by_verdict"]:
        lines.insert(4, "Verdicts " + ", ".join(f"{k} {v}" for k, v in sorted(units["by_verdict"].items())))
    pairs = data["pairs"]
    if pairs["mode"] == "onpolicy":
        rate = f" (pass@k {100 * pairs['pass_at_k']:.1f}%)" if pairs["pass_at_k"] is not None else ""
        lines[3:3] = [
            f"Pairs    {pairs['pairs']} on-policy pairs from {pairs['samples_with_pairs']} samples, "
            f"{pairs['fallbacks']} with the gold as chosen",
            f"Answers  of {pairs['samples_paired']} samples judged, {pairs['samples_with_correct']} have a correct "
            f"answer{rate}, {pairs['samples_without_correct']} none, {pairs['samples_without_wrong']} no wrong one",
        ]
    lines.append("Runs")
    for run in data["runs"]:
        backoffs = f", {run['oom_backoffs']} OOM backoffs" if run["oom_backoffs"] else ""
        reason = f": {run['stop_reason']}" if run["stop_reason"] else ""
        lines += wrapped(
            f"  #{run['id']} {run['started_at'][:16].replace('T', ' ')} {human_duration(run['seconds']):>6} "
            f"{run['units_done']:>6} units  {run['status']}{reason}{backoffs}"
        )
    if data["last_error"]:
        error = data["last_error"]
        lines += wrapped(f"Last error (run #{error['run_id']}): {error['stop_reason']}: {error['error']}", "  ")
    return printable("\n".join(lines))


def _speed(units: float | None, tokens: float | None) -> str:
    if units is None:
        return "-"
    return f"{human_number(units)} units/s, {human_number(tokens or 0)} tok/s"


def config_yaml(data: dict) -> str:
    """The latest run's settings as a --config file that reproduces it."""
    import yaml

    settings = {k.replace("_", "-"): v for k, v in data["settings"].items()}
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)


def format_sample(path: str, sample_index: int, full: bool = False, width: int = 200) -> str:
    """Every unit of one sample."""
    ledger = Ledger(path, readonly=True)
    try:
        units = ledger.sample_units(sample_index)
    finally:
        ledger.close()
    if not units:
        return f"Sample {sample_index}: no units in the ledger."
    lines = [f"Sample {sample_index}: {len(units)} units"]
    for unit in units:
        raw = unit["raw_answer"] or ""
        if not full and len(raw) > width:
            raw = raw[:width] + f"... ({len(raw)} chars, --full for all)"
        verdict = f"  verdict {unit['verdict']}" if unit.get("verdict") else ""
        verdict += f" ({unit['role']})" if unit.get("role") else ""
        lines += [
            f"- reject {unit['reject_index']}  seed {unit['seed']}  status {unit['status']}{verdict}  "
            f"tokens {unit['prompt_tokens']}+{unit['new_tokens']}  {unit['gen_seconds'] or 0:.2f}s",
            f"  sql: {unit['sql']}",
            f"  answer: {raw}",
        ]
        if unit["detail"]:
            lines.append(f"  detail: {unit['detail']}")
    return printable("\n".join(lines))


def suspects_data(path: str) -> list[dict]:
    """The samples whose gold is suspect (`prefgen ledger suspects --json`)."""
    ledger = Ledger(path, readonly=True)
    try:
        return suspects(ledger.db)
    finally:
        ledger.close()


def format_suspects(suspects: list[dict], width: int = 200) -> str:
    """The golds worth a second look: sample, database, why, question and gold."""
    if not suspects:
        return "No suspect gold."
    lines = [f"{len(suspects)} golds worth a second look"]
    for row in suspects:
        lines_of = (row["input"] or row["instruction"] or "").strip().splitlines() or [""]
        question = lines_of[-1]  # Spider- and BIRD-style records end with the question
        lines += [
            f"- sample {row['sample_index']}  db {row['db'] or '-'}: {row['suspect_detail']}",
            f"  question: {question[:width]}",
            f"  gold: {row['gold']}",
        ]
    return printable("\n".join(lines))


def format_failures(path: str) -> str:
    """Units in error / oom / no_sql / timeout / retry, grouped by reason."""
    ledger = Ledger(path, readonly=True)
    try:
        groups = ledger.failures()
    finally:
        ledger.close()
    if not groups:
        return "No failed units."
    lines = []
    for group in groups:
        lines += wrapped(f"{group['status']}: {group['reason']} ({group['units']} units)", "  ")
        lines.append(f"  samples: {group['samples']}")
    return printable("\n".join(lines))


def reuse_line(answers: dict) -> str:
    """The line of `ledger status` and of generate's summary saying what --reuse-answers saved."""
    regenerated = f", {answers[REGENERATED]} regenerated at a larger cap" if answers[REGENERATED] else ""
    return (
        f"Answers  {answers[REUSED]} reused from an earlier run{regenerated}, {answers[GENERATED]} generated;"
        f" {answers['saved_gpu_s']:.1f}s of generation saved"
    )


def latest_error(ledger: Ledger) -> dict | None:
    """The latest run that stopped on an error, if any."""
    sql = (
        "select id as run_id, ended_at as at, stop_reason, error from runs"
        " where error is not null and error != '' order by id desc limit 1"
    )
    return next(ledger.db.query(sql), None)
