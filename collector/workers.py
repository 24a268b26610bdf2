"""`beacon serve --workers N`: N collector processes on one port, supervised.

Every worker listens on the same address with SO_REUSEPORT, so the kernel spreads new
connections over their accept queues; nothing is shared between them but the spool directory
(built for several writers) and the Prometheus multiprocess directory, through which any
worker's /metrics shows the sum over all of them. This master process holds the port (bound,
never listening) so port 0 means one port for all, and makes each worker's listening socket
before starting it: the kernel spreads connections over every worker from the first one, even
over a worker still starting (they wait in its queue). When workers bound their own sockets, a
client that connected as soon as the first one answered (a load balancer's keep-alive pool, a
benchmark) had that one worker for all its connections: half the collector on two cores, in
about a third of the starts. It restarts a worker that dies (its socket goes with it, so new
connections go to the others meanwhile, and is made again for the restart) and marks its live
gauges dead; on SIGTERM it stops every worker at once, and each drains, flushes its buffer and
exits.
https://prometheus.github.io/client_python/multiprocess/
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from collector.kept import resolve_kept
from collector.settings import Settings
from collector.supervisor import Child, Supervisor

log = logging.getLogger("beacon.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it at import
LISTEN_FD_ENV = "BEACON_LISTEN_FD"  # a worker's listening socket, made by its master
LISTEN_BACKLOG = 1024  # what aiohttp's sites ask for
# Below the `beacon run` supervisor's own deadline for this process, so workers that hang are
# killed here, by the process that can still mark them dead.
WORKER_STOP_TIMEOUT_S = 45.0


class PortInUse(RuntimeError):
    """Something already listens on the collector's address."""


def default_workers() -> int:
    """The CPUs this process may run on (taskset and cpusets included)."""
    return len(os.sched_getaffinity(0))


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, not listening: it keeps the port ours
    between worker restarts and turns port 0 into a real one. Raises PortInUse when another
    process listens there: SO_REUSEPORT alone would silently share the port with it."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    if port:
        with socket.socket(family, kind, proto) as probe:
            # SO_REUSEADDR: connections in TIME_WAIT do not count, a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise PortInUse(f"{host}:{port} is in use: {exc.strerror}") from None
    try:
        return shared_socket(family, kind, proto, address)
    except OSError as exc:
        raise PortInUse(f"{host}:{port}: {exc.strerror}") from None


def shared_socket(family: int, kind: int, proto: int, address: Any) -> socket.socket:
    """A socket bound to `address` with SO_REUSEPORT (and SO_REUSEADDR), not listening yet;
    raises OSError, closing it, when the bind fails."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class Worker(Child):
    """A worker process, started with a listening socket of its own on the shared port."""

    def __init__(self, role: str, argv: list[str], env: dict[str, str], address: tuple) -> None:
        super().__init__(role, argv, env)
        self.address = address  # (family, type, proto, sockaddr) of the port holder

    def start(self) -> None:
        with shared_socket(*self.address) as listener:
            listener.listen(LISTEN_BACKLOG)
            self.fds = (listener.fileno(),)
            self.env = {**self.env, LISTEN_FD_ENV: str(listener.fileno())}
            super().start()
        # Only the worker holds it now: when the worker exits, the kernel closes it, and new
        # connections go to the other workers until the restart makes another.


def metrics_dir(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The multiprocess directory for this run, empty; True if it is ours to remove after.

    A configured PROMETHEUS_MULTIPROC_DIR is emptied of the last run's files (counters of dead
    processes would be added to ours); otherwise a fresh temporary directory is made.
    """
    configured = env.get(MULTIPROC_ENV)
    if not configured:
        return Path(tempfile.mkdtemp(prefix="beacon-metrics-")), True
    path = Path(configured)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path, False


def run_workers(settings: Settings, env: Mapping[str, str], workers: int) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT; 0 when all stopped cleanly."""
    # Made once here: workers starting together would race to create the kept files.
    resolve_kept(settings)
    try:
        holder = reserve_port(settings.host, settings.port)
    except PortInUse as exc:
        log.error("%s", exc)
        return 1
    port = holder.getsockname()[1]
    directory, owned = metrics_dir(env)
    worker_env = {
        **env,
        "BEACON_PORT": str(port),
        MULTIPROC_ENV: str(directory),
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "beacon", "serve", "--workers", "1"]
    address = (holder.family, holder.type, holder.proto, holder.getsockname())
    children = [Worker(f"worker {i}", argv, worker_env, address) for i in range(workers)]

    def mark_dead(child: Child) -> None:
        multiprocess.mark_process_dead(child.pid, str(directory))

    def started() -> None:
        pids = " ".join(str(c.pid) for c in children)
        log.info("%d workers on http://%s:%d (pids %s)", workers, settings.host, port, pids)

    supervisor = Supervisor(children, on_exit=mark_dead, stop_timeout_s=WORKER_STOP_TIMEOUT_S)
    try:
        return supervisor.run(on_started=started)
    finally:
        holder.close()
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
