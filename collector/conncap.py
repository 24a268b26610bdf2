"""The connection cap: at most `max_connections` open connections per worker process.

An idle socket costs a client nothing and the collector a file descriptor: without a cap a few
thousand of them exhaust the descriptors, and then nothing is accepted, /healthz included, and
the spool cannot open a segment. The default cap is the open-files limit less a reserve for
everything else a worker opens (spool and WAL segments, Kafka connections, logs, metrics files).

At the cap, a new connection takes the place of an idle one, as nginx reuses keep-alive
connections when its worker_connections run out: an idle connection has nothing in progress (no
request head being read, no request being handled), so closing it loses nothing but a
keep-alive, and a client opens another. Quiet ones (nothing received since their timer's last
check: an idle socket that never sent a byte is one) go first, oldest first. A new connection is
closed at once, refused, only when none of the oldest is idle: all of them are in a request,
which the head and body deadlines bound (collector/limits.py). So idle sockets can never keep a
health probe, a scrape or a pixel out.

Not chosen: a reserve of places above the cap for health probes. A probe is known only by its
first bytes, so every connection would be accepted into the reserve first; anyone can send
`GET /healthz` and hold its place, and the pixels are refused all the same while idle sockets
hold every place. Closing idle connections serves all clients, probes included.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from typing import Protocol

from collector.metrics import CollectorMetrics

log = logging.getLogger("beacon.collector")

# Descriptors a worker keeps for everything but client connections: listening socket, event
# loop, spool and WAL segments (and closed ones awaiting their fsync), Kafka broker
# connections, metrics files, logs, and the connections accepted in one loop iteration
# before the cap counts them.
FD_RESERVE = 128
# Connections looked at to find an idle one, oldest first; those that are not are moved to the
# back, so a scan never starts again on the same busy ones (the CLOCK page-replacement idea).
SCAN_MAX = 64
# At most one warning line in this time while the cap is hit, with the counts since the last.
WARN_INTERVAL_S = 60.0
# Takes the events of a refused connection: nothing of it reached aiohttp or the fast path.
_REFUSED = asyncio.Protocol()


def default_max_connections() -> int:
    """The open-files soft limit (RLIMIT_NOFILE) less FD_RESERVE, at least half of it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(soft - FD_RESERVE, soft // 2)


class Capped(Protocol):
    """What the cap asks of a connection's protocol."""

    def idle(self) -> bool:
        """Nothing in progress: closing it loses no request."""
        ...

    def quiet(self) -> bool:
        """Nothing received lately."""
        ...

    def close(self) -> None: ...


class ConnectionCap:
    """The open connections of one worker, oldest first; admits, evicts and refuses them."""

    def __init__(self, max_connections: int, metrics: CollectorMetrics) -> None:
        self.max_connections = max_connections
        self.open: OrderedDict[Capped, None] = OrderedDict()
        self._counted = {
            action: metrics.connections_capped.labels(action)
            for action in ("closed_idle", "refused")
        }
        self._unlogged = dict.fromkeys(self._counted, 0)
        self._log_timer: asyncio.TimerHandle | None = None
        metrics.connections_max.set(max_connections)
        gauge = metrics.connections_open
        metrics.folds.append(lambda: gauge.set(len(self.open)))  # read at each tick, no cost

    def admit(self, connection: Capped, transport: asyncio.BaseTransport) -> bool:
        """Count `connection` in; at the cap an idle one makes room, or it is closed at once."""
        if len(self.open) >= self.max_connections and not self._make_room():
            transport.set_protocol(_REFUSED)
            transport.close()
            self._note("refused")
            return False
        self.open[connection] = None
        return True

    def release(self, connection: Capped) -> None:
        """`connection` is gone, or handed to another protocol that admits itself."""
        self.open.pop(connection, None)

    def close(self) -> None:
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None

    def _make_room(self) -> bool:
        """Closes an idle connection, a quiet one if any among the oldest; False if none is."""
        victim: Capped | None = None
        fallback: Capped | None = None  # idle, but it received something lately
        for _ in range(min(SCAN_MAX, len(self.open))):
            connection, _ = self.open.popitem(last=False)
            self.open[connection] = None  # to the back: the next scan starts past it
            if connection.idle():
                if connection.quiet():
                    victim = connection
                    break
                if fallback is None:
                    fallback = connection
        if victim is None:
            victim = fallback
        if victim is None:
            return False
        del self.open[victim]
        victim.close()
        self._note("closed_idle")
        return True

    def _note(self, action: str) -> None:
        self._counted[action].inc()
        self._unlogged[action] += 1
        if self._log_timer is None:  # the first since a quiet interval: said at once
            self._warn()

    def _warn(self) -> None:
        closed, refused = self._unlogged["closed_idle"], self._unlogged["refused"]
        if not closed and not refused:
            self._log_timer = None
            return
        log.warning(
            "connection cap of %d reached (BEACON_MAX_CONNECTIONS): closed %d idle"
            " connection(s) to make room, refused %d new one(s); next report in %d s at the"
            " earliest",
            self.max_connections,
            closed,
            refused,
            WARN_INTERVAL_S,
        )
        self._unlogged = dict.fromkeys(self._unlogged, 0)
        self._log_timer = asyncio.get_running_loop().call_later(WARN_INTERVAL_S, self._warn)
