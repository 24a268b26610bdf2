"""`beacon run`: the embedded default, a collector and a consumer under one supervisor.

Each runs in its own process (chDB wants the store to itself, and a crash of one must not
take the other down); a process that dies is started again. On SIGTERM the collector stops
first, so its last events reach the spool, then the consumer inserts them and stops.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger("beacon.run")

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 60.0


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the supervisor dies, even by SIGKILL."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    role: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self, env: Mapping[str, str]) -> None:
        # A session of its own: a Ctrl-C or a signal to our process group reaches only the
        # supervisor, which then stops the children in the order that loses nothing.
        self.proc = subprocess.Popen(
            self.argv, env=dict(env), start_new_session=True, preexec_fn=_die_with_parent
        )
        self.started_at = time.monotonic()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in %.0fs; killing it", self.role, STOP_TIMEOUT_S)
            self.proc.kill()
            return self.proc.wait()


def supervise(env: Mapping[str, str], banner: str) -> int:
    """Run until SIGTERM/SIGINT; restart children that exit on their own."""
    # The consumer first: it opens the store and migrates before events arrive.
    children = [
        Child("consumer", [sys.executable, "-m", "collector", "consume"]),
        Child("collector", [sys.executable, "-m", "collector", "serve"]),
    ]
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for child in children:
        child.start(env)
    print(banner, flush=True)
    while not stopping:
        time.sleep(0.2)
        for child in children:
            assert child.proc is not None
            code = child.proc.poll()
            if code is None or stopping:
                continue
            child.restarts += 1
            log.error("%s exited with %s; restart #%d", child.role, code, child.restarts)
            time.sleep(RESTART_DELAY_S)
            child.start(env)
    # Reverse order: the collector flushes into the spool, then the consumer drains it.
    codes = {child.role: child.stop() for child in reversed(children)}
    log.info("stopped (%s)", ", ".join(f"{role}={code}" for role, code in codes.items()))
    return 0 if all(code in (0, None) for code in codes.values()) else 1


def child_env(env: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    merged = dict(env)
    merged.update(overrides)
    merged.setdefault("PYTHONUNBUFFERED", "1")
    return merged
