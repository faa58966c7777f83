"""Every process a run starts dies with it, even when the run is killed with SIGKILL.

This is prefgen's one reaper. `guard_children()` puts a token into this process's environment,
which every process it starts from then on inherits, however deep: the verdict workers of
`--db-root` (sql/workers.py calls it before starting them) and whatever the vLLM engine starts
(engines/vllm.py calls it before starting the engine), their compile workers and trackers.
It also starts a watcher in a session of its own (so Ctrl-C at the terminal does not reach
it). When this process ends, by return or by kill -9, the watcher kills every process still
carrying the token, then exits. Nothing is left behind holding memory or a GPU (a resumed run
would otherwise run out of it).

Run as `python -m prefgen.runtime.processes PID TOKEN`, this module is the watcher.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

TOKEN_VAR = "PREFGEN_RUN_TOKEN"
POLL_SECONDS = 0.2
_watcher: subprocess.Popen | None = None  # kept: a collected Popen of a live process warns


def guard_children() -> str:
    """Make every process started from now on die with this one; return the token (once per
    process: later calls return the same)."""
    token = os.environ.get(TOKEN_VAR, "")
    if token.startswith(f"{os.getpid()}-"):
        return token
    global _watcher
    token = f"{os.getpid()}-{secrets.token_hex(8)}"
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
    _watcher = subprocess.Popen(
        [sys.executable, "-m", "prefgen.runtime.processes", str(os.getpid()), token],
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    os.environ[TOKEN_VAR] = token
    return token


def carriers(token: str) -> list[int]:
    """The processes whose environment holds the token."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0"):
                found.append(int(entry.name))
    return found


def kill_carriers(token: str) -> None:
    """SIGKILL every carrier, again until none is left (one may have been starting)."""
    for _ in range(50):
        pids = carriers(token)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(POLL_SECONDS)


def watch(parent: int, token: str) -> None:
    """Wait for `parent` to end, then kill what it left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    kill_carriers(token)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
