"""Inspection: read a ledger (read-only, safe while a run writes it) and summarise it."""

from __future__ import annotations

from prefgen.ledger import Ledger


def status_report(path: str) -> str:
    """Units done / total and counts by status, as text for a terminal."""
    ledger = Ledger(path, readonly=True)
    try:
        counts = ledger.status_counts()
        samples = int(ledger.meta("samples_total", "0") or 0)
        rejects = int(ledger.meta("num_rejects", "0") or 0)
        runs = ledger.runs()
    finally:
        ledger.close()
    from prefgen.judge import RETRIED_STATUSES

    total = samples * rejects
    done = sum(n for status, n in counts.items() if status not in RETRIED_STATUSES)
    lines = [f"Ledger: {path}", f"Units done: {done} / {total}" + (f" ({100 * done / total:.1f}%)" if total else "")]
    lines += [f"  {status:<10} {n}" for status, n in sorted(counts.items())]
    if runs:
        last = runs[-1]
        lines.append(f"Runs: {len(runs)}; last started {last['started_at']}, status {last['status']}")
    return "\n".join(lines)
