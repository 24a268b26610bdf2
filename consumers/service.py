"""Run a consumer process: open the store, migrate, serve the query port, consume the spool."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry

from consumers.metrics import ConsumerMetrics
from consumers.pipeline import SpoolPipeline
from consumers.query_server import create_query_app
from consumers.schema import migrate
from consumers.settings import ConsumerSettings
from consumers.sources.spool import SpoolSource
from consumers.writers.chdb import ChdbWriter

log = logging.getLogger("beacon.consumer")


async def consume(settings: ConsumerSettings) -> None:
    """Consume until SIGTERM/SIGINT, then insert what is already spooled and exit."""
    writer = ChdbWriter(settings.store_dir)
    applied = await migrate(writer, settings.retention_days)
    if applied:
        log.info("applied migrations %s", applied)
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    runner = web.AppRunner(
        create_query_app(writer, registry), access_log=None, handle_signals=False
    )
    await runner.setup()
    await web.TCPSite(runner, settings.store_host, settings.store_port).start()
    log.info("store query port on http://%s:%d", settings.store_host, settings.store_port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    source = SpoolSource(settings.spool_dir, settings.checkpoint_path)
    try:
        await SpoolPipeline(source, writer, metrics, settings).run(stop)
    finally:
        await runner.cleanup()
        await writer.close()
    log.info("consumer stopped")
