"""Named fault-injection points, so every dangerous moment can be tested deterministically.

Set PREFGEN_FAULT to `POINT[:ACTION][@N]` (several separated by commas):
- POINT is one of FAULT_POINTS;
- ACTION is `kill` (SIGKILL this process, the default), `raise` (RuntimeError), `enospc`
  (OSError ENOSPC), `eio` (OSError EIO), `sigterm`/`sigint` (send that signal to this process),
  `sigterm2`/`sigint2` (send it twice), `sleep` (pause 60 s, holding everything it holds)
  or `oom>R` (an out-of-memory error when the batch has more than R rows);
- @N fires on the N-th time the point is reached (default: the first).

Unset, every point costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Callable

from prefgen.errors import OutOfMemory

FAULT_POINTS = (
    "after_raise_marker",  # raise_cap.py: a larger --max-new-tokens moving the run so far aside
    "mid_raise_move",
    "after_raise_move",
    "after_ledger_open",
    "mid_model_load",
    "after_model_load",
    "before_generate",
    "generate",
    "mid_jsonl_write",
    "after_jsonl_write",
    "after_commit",
)

_hits: dict[tuple[str, str], int] = {}


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    faults = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        item, _, nth = item.partition("@")
        point, _, action = item.partition(":")
        if point not in FAULT_POINTS:
            raise ValueError(f"PREFGEN_FAULT names unknown point {point!r}; known: {', '.join(FAULT_POINTS)}")
        faults[point] = (action or "kill", int(nth or 1))
    return faults


def fault_point(point: str, rows: int = 0, before: Callable[[], None] | None = None) -> None:
    """Do what PREFGEN_FAULT asks at this point, if anything; `before` runs first when it fires."""
    spec = os.environ.get("PREFGEN_FAULT")
    if not spec:
        return
    fault = _parse(spec).get(point)
    if fault is None:
        return
    action, nth = fault
    if action.startswith("oom>"):
        if rows > int(action[4:]):
            raise OutOfMemory(f"injected out-of-memory at {point} with {rows} rows")
        return
    key = (spec, point)  # a new PREFGEN_FAULT value starts counting afresh
    _hits[key] = _hits.get(key, 0) + 1
    if _hits[key] != nth:
        return
    if before is not None:
        before()
    _trigger(point, action)


def _trigger(point: str, action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action in _SIGNALS:
        signum, times = _SIGNALS[action]
        for _ in range(times):
            os.kill(os.getpid(), signum)
    elif action == "sleep":
        time.sleep(60)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    elif action == "eio":
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    elif action == "raise":
        raise RuntimeError(f"injected fault at {point}")
    else:
        raise ValueError(f"PREFGEN_FAULT: unknown action {action!r} at {point}")


_SIGNALS = {
    "sigint": (signal.SIGINT, 1),
    "sigterm": (signal.SIGTERM, 1),
    "sigint2": (signal.SIGINT, 2),
    "sigterm2": (signal.SIGTERM, 2),
}
