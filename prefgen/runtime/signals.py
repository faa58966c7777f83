"""SIGINT and SIGTERM during a run: the first asks to stop after the work in flight is committed,
a second stops at once (the commit protocol keeps that safe too)."""

from __future__ import annotations

import logging
import signal

from prefgen.errors import Interrupted

log = logging.getLogger("prefgen")

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopSignals:
    """Catches SIGINT/SIGTERM while a run holds it; `check()` raises once a stop was asked for."""

    def __init__(self):
        self.received: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        for signum in EXIT_CODES:
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            raise Interrupted(f"stopped at once by a second {name}", exit_code=EXIT_CODES[signum], immediate=True)
        self.received = signum
        log.warning("%s received: stopping after the batch in flight is committed (again to stop now)", name)

    def check(self) -> None:
        """Raise Interrupted when a stop was asked for."""
        if self.received is not None:
            name = signal.Signals(self.received).name
            raise Interrupted(f"stopped by {name} after committing", exit_code=EXIT_CODES[self.received])
