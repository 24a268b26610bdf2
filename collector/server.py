"""Run the collector: sink, app, listening socket, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from collector import aiohttp_compat as compat
from collector.app import COLLECTOR, create_app
from collector.conncap import ConnectionCap, default_max_connections
from collector.fastpath import fast_paths
from collector.kept import resolve_kept
from collector.limits import GuardedSite, handler_options
from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks import Sink
from collector.sinks.kafka import KafkaSink
from collector.sinks.memory import MemorySink
from collector.sinks.spool import SpoolSink
from collector.spool.writer import spool_limits

log = logging.getLogger("beacon.collector")


def make_sink(settings: Settings, metrics: CollectorMetrics) -> Sink:
    """The configured sink; a Kafka sink is started, so call this inside the running loop."""
    if settings.sink == "memory":
        # Keeps the newest events only: a server's memory stays bounded under any load.
        discarded = metrics.events_dropped.labels("memory_sink_discarded")
        return MemorySink(settings.buffer_max_events, discarded.inc)
    # The Kafka sink spills into the same spool the embedded setup uses as its only sink.
    spool = SpoolSink(settings.spool_dir, metrics, **spool_limits(settings))
    if settings.uses_kafka:
        return KafkaSink(settings, metrics, spool).start()
    return spool


async def serve(
    settings: Settings, multiprocess_dir: Path | None = None, sock: socket.socket | None = None
) -> None:
    """Serve until SIGTERM/SIGINT, then: not ready, drain, flush the buffer, exit.

    `multiprocess_dir`: this is one of several workers (collector/workers.py) whose metrics
    meet there; /metrics then shows their sum. `sock`: the listening socket its master made
    for it, else this process binds the address.
    """
    if not compat.tested_release():
        log.warning(
            "aiohttp %s is not a release collector/aiohttp_compat.py was read from (%s)",
            aiohttp.__version__,
            ", ".join(compat.KNOWN),
        )
    settings = resolve_kept(settings)
    # A file past RLIMIT_FSIZE fails its write with EFBIG, counted as a spool or WAL error like a
    # full disk, instead of SIGXFSZ killing the worker with every event it holds (PostgreSQL
    # ignores it too).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # Before anything slow (the country data takes a second to load): a SIGTERM during start-up
    # then stops the collector cleanly once it is up, instead of killing it with the default.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = CollectorMetrics(CollectorRegistry(), multiprocess_dir, kafka=settings.uses_kafka)
    app = create_app(settings, make_sink(settings, metrics), metrics)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, **handler_options(settings, metrics)
    )
    await runner.setup()
    cap = ConnectionCap(settings.max_connections or default_max_connections(), metrics)
    site = GuardedSite(
        runner,
        settings.host,
        settings.port,
        reuse_port=True,
        header_timeout_s=settings.header_timeout_ms / 1000,
        metrics=metrics,
        fast_paths=fast_paths(settings, app[COLLECTOR], metrics, cap),
        cap=cap,
        sock=sock,
    )
    await site.start()
    metrics.workers.set(1)
    metrics.worker_starts.inc()
    log.info(
        "collector listening on http://%s:%d (pid %d, at most %d connections)",
        settings.host,
        settings.port,
        os.getpid(),
        cap.max_connections,
    )
    keyring = app[COLLECTOR].gate.keyring  # the one the app checks links with
    if keyring:
        log.info("signing key %s; links signed with key ids %s are accepted",
                 keyring.signing_kid, ", ".join(keyring.kids))  # fmt: skip
    else:  # only with Kafka (collector/kept.py): collectors there need keys set alike
        log.warning("no signing key: click links are refused and pixels recorded unverified; "
                    "set BEACON_SIGNING_KEYS alike on every collector")  # fmt: skip

    await stop.wait()

    # Load balancers see /readyz fail and stop sending; requests already routed here still land.
    app[COLLECTOR].draining = True
    log.info("draining for %d ms", settings.drain_ms)
    await asyncio.sleep(settings.drain_ms / 1000)
    await runner.cleanup()  # stops accepting, finishes in-flight requests, then buffer.close()
    log.info("collector stopped")
