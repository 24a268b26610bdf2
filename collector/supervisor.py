"""Process supervision: `beacon run` (collector + consumer) and `beacon serve --workers N`.

Each child runs in its own process and session; one that dies is started again, after a delay
that doubles while it keeps dying young. On SIGTERM/SIGINT the children are stopped group by
group (a group at once, the groups in order), each with SIGTERM and a deadline.

`beacon run`: a collector and a consumer (chDB wants the store to itself, and a crash of one
must not take the other down). The collector stops first, so its last events reach the spool,
then the consumer inserts them and stops.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from contract.owner import CLAIMS_ENV, inherited

log = logging.getLogger("beacon.supervisor")

RESTART_DELAY_S = 0.5  # first restart; doubled for each exit in a row within MIN_UPTIME_S
RESTART_DELAY_MAX_S = 30.0
MIN_UPTIME_S = 10.0
STOP_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the supervisor dies, even by SIGKILL."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process: how to start it, and its restart bookkeeping."""

    role: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    quick_exits: int = 0  # exits in a row, each within MIN_UPTIME_S of its start
    restart_at: float | None = field(default=None)
    fds: tuple[int, ...] = ()  # passed down besides the claims (a worker's listening socket)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> None:
        # A session of its own: a Ctrl-C or a signal to our process group reaches only the
        # supervisor, which then stops the children in the order that loses nothing. The data
        # directory's claims go along (contract/owner.py): the child works under them.
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            pass_fds=(*inherited(self.env.get(CLAIMS_ENV, "")).values(), *self.fds),
        )
        self.started_at = time.monotonic()
        self.restart_at = None

    def poll(self) -> int | None:
        """The exit code once the process has ended (None while it runs or is not started)."""
        return None if self.proc is None else self.proc.poll()

    def schedule_restart(self, now: float) -> float:
        """Note an exit; returns the delay before the restart."""
        self.quick_exits = self.quick_exits + 1 if now - self.started_at < MIN_UPTIME_S else 0
        self.restarts += 1
        return self._restart_in(now)

    def schedule_retry(self, now: float) -> float:
        """Note a restart that could not start the process; returns the delay before the next
        try (doubled as for a child dying young)."""
        self.quick_exits += 1
        return self._restart_in(now)

    def _restart_in(self, now: float) -> float:
        # Capped doublings: the delay is at its bound long before, and 2.0**1024 overflows
        # (a child dying young for hours took the supervisor and its healthy ones down).
        delay_s = min(RESTART_DELAY_S * 2 ** min(self.quick_exits, 30), RESTART_DELAY_MAX_S)
        self.restart_at = now + delay_s
        return delay_s

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the exit after terminate(); SIGKILL past the timeout. None: never started."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) did not stop in time; killing it", self.role, self.pid)
            self.proc.kill()
            return self.proc.wait()


class Supervisor:
    """Starts children, restarts those that exit, stops them all on SIGTERM/SIGINT."""

    def __init__(
        self,
        children: Sequence[Child],
        stop_order: Sequence[Sequence[Child]] | None = None,
        on_exit: Callable[[Child], None] | None = None,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.children = list(children)
        self.stop_order = [list(g) for g in stop_order] if stop_order else [self.children]
        self.on_exit = on_exit or (lambda child: None)
        self.stop_timeout_s = stop_timeout_s
        self.stopping = False

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """Run until SIGTERM/SIGINT; 0 when every child then stopped cleanly."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            child.start()
        if on_started is not None:
            on_started()
        while not self.stopping:
            time.sleep(POLL_INTERVAL_S)
            self.tend(time.monotonic())
        return self.stop()

    def tend(self, now: float) -> None:
        """One pass: restart children whose delay is over, schedule those that exited."""
        for child in self.children:
            if self.stopping:
                return
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child, now)
                continue
            code = child.poll()
            if code is None:
                continue
            self.on_exit(child)
            delay_s = child.schedule_restart(now)
            log.error(
                "%s (pid %d) exited with %s; restart #%d in %.1fs",
                child.role, child.pid, code, child.restarts, delay_s,
            )  # fmt: skip

    def _restart(self, child: Child, now: float) -> None:
        try:
            child.start()
        except OSError as exc:
            # Out of processes, memory or descriptors for a moment (EAGAIN, ENOMEM, EMFILE):
            # the other children go on, and this one is tried again. Raised, it stopped the
            # supervisor and every child with it.
            delay_s = child.schedule_retry(now)
            log.error("%s could not be restarted (%s); trying again in %.1fs", child.role,
                      exc, delay_s)  # fmt: skip
            return
        log.info("%s restarted (pid %d)", child.role, child.pid)

    def stop(self) -> int:
        """SIGTERM each group at once, groups in order; 0 if every child exited with 0."""
        codes: dict[str, int | None] = {}
        for group in self.stop_order:
            for child in group:
                child.terminate()
            deadline = time.monotonic() + self.stop_timeout_s
            for child in group:
                was_running = child.restart_at is None
                code = child.wait(deadline - time.monotonic())
                if was_running and code is not None:
                    self.on_exit(child)
                # A child waiting for its restart ended earlier: its exit was already logged.
                codes[child.role] = code if was_running else None
        log.info("stopped (%s)", ", ".join(f"{role}={code}" for role, code in codes.items()))
        return 0 if all(code in (0, None) for code in codes.values()) else 1


def supervise(env: Mapping[str, str], banner: str, serve_args: Sequence[str] = ()) -> int:
    """`beacon run`: the consumer and the collector, until SIGTERM/SIGINT."""
    child_env = dict(env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    # The consumer first: it opens the store and migrates before events arrive.
    consumer = Child("consumer", [sys.executable, "-m", "beacon", "consume"], child_env)
    serve = [sys.executable, "-m", "beacon", "serve", *serve_args]
    collector = Child("collector", serve, child_env)
    # The collector stops first: it flushes into the spool, then the consumer drains it.
    supervisor = Supervisor([consumer, collector], stop_order=[[collector], [consumer]])
    return supervisor.run(on_started=lambda: print(banner, flush=True))
