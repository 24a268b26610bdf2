"""Run a consumer process: open the store, migrate, serve the query port, consume.

The source is Kafka when `kafka_bootstrap` is set, else the local spool; the writer is a
ClickHouse server over HTTP when `clickhouse_url` is set, else the embedded chDB store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry

from analytics.connect import open_reader, open_writer
from analytics.migrations import migrate
from analytics.query_server import create_query_app
from analytics.rollup_settle import Settler, settle_loop
from analytics.store import StoreError, Writer
from analytics.web import WebConfig
from consumers.metrics import ConsumerMetrics
from consumers.pipeline import Pipeline
from consumers.settings import ConsumerSettings

log = logging.getLogger("beacon.consumer")

RESTART_DELAY_S = 0.5  # the first wait for an unreachable Kafka, doubled up to retry_max_ms
START_PROBE = "start"  # the batch named by the read of await_earlier_inserts at start


async def run_pipeline(
    settings: ConsumerSettings, writer: Writer, metrics: ConsumerMetrics, stop: asyncio.Event
) -> None:
    """Consume from Kafka or from the spool until `stop` is set."""
    if settings.kafka_bootstrap:
        await run_kafka_pipeline(settings, writer, metrics, stop)
        return
    from consumers.sources.spool import SpoolSource
    from consumers.sources.spool_feed import SpoolFeed

    spool = SpoolSource(settings.spool_dir, settings.checkpoint_path)
    await Pipeline(SpoolFeed(spool, metrics, settings), writer, metrics, settings).run(stop)


async def run_kafka_pipeline(
    settings: ConsumerSettings, writer: Writer, metrics: ConsumerMetrics, stop: asyncio.Event
) -> None:
    """The Kafka pipeline, started again while the brokers cannot be reached: a consumer that
    starts before Kafka (a cluster coming up, an outage, a broker dead but still listed in the
    cluster's metadata) waits for it with one line a try, instead of ending in a traceback. A
    new start is a new member: it replays what its partitions have in flight, as after a
    restart. An error no retry mends (a permission, a setting) ends it."""
    from aiokafka.errors import KafkaError, KafkaTimeoutError

    from consumers.dlq import DeadLetters
    from consumers.sources.kafka import KafkaSource
    from consumers.sources.kafka_feed import KafkaFeed

    log.info(
        "consuming %s as group %s from %s",
        settings.kafka_topic,
        settings.kafka_group,
        settings.kafka_bootstrap,
    )
    delay_s = RESTART_DELAY_S
    while not stop.is_set():
        source = KafkaSource(settings)
        dead_letters = DeadLetters(settings.kafka_bootstrap, settings.kafka_dlq_topic)
        feed = KafkaFeed(source, dead_letters, metrics, settings)
        try:
            await Pipeline(feed, writer, metrics, settings).run(stop)
            return
        except KafkaError as exc:
            if not (exc.retriable or isinstance(exc, KafkaTimeoutError)):
                raise
            log.warning(
                "Kafka at %s cannot be reached (%r); trying again in %.1f s",
                settings.kafka_bootstrap, exc, delay_s,
            )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay_s)
        delay_s = min(delay_s * 2, settings.retry_max_ms / 1000)


async def consume(settings: ConsumerSettings) -> None:
    """Consume until SIGTERM/SIGINT, then store what is already read and exit."""
    writer = open_writer(settings)
    reader = open_reader(settings)
    try:
        applied = await migrate(writer, settings.retention_days)
        if applied:
            log.info("applied migrations %s", applied)
        # What a retried batch's wait reads (analytics/store/http.py), read once now: a cluster
        # named wrong, or a user without the REMOTE grant that clusterAllReplicas needs, stops
        # the start rather than the first retry, in an incident. No batch's token is this.
        try:
            await writer.await_earlier_inserts(START_PROBE)
        except StoreError as exc:
            raise StoreError(
                f"the inserts running on ClickHouse cannot be read ({exc}): check "
                "BEACON_CLICKHOUSE_CLUSTER or BEACON_CLICKHOUSE_REPLICAS_CLUSTER, and that the "
                "user may read system.processes (and has the REMOTE grant on a cluster)"
            ) from exc
        registry = CollectorRegistry()
        metrics = ConsumerMetrics(registry)
        # The query port answers `beacon report` for the embedded store, and /metrics always.
        # handler_cancellation: a read whose client has gone is stopped, not run to its end.
        runner = web.AppRunner(
            create_query_app(
                writer,
                reader,
                registry,
                settings.audit_path,
                settings.dashboard_token,
                WebConfig.from_settings(settings),
            ),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.store_host, settings.store_port).start()
            log.info("store query port on http://%s:%d", settings.store_host, settings.store_port)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            # On a server the ingest and the settling have writers of their own: their
            # statements run in sessions of their own, which the others and the query port's
            # erasures never hold (a session takes one statement at a time, a day's settling
            # up to BEACON_CLICKHOUSE_DAY_TIMEOUT_S, and a long one runs on after its client
            # gave up). The embedded store is one writer.
            exclusive = getattr(writer, "exclusive", False)
            settle_writer = writer if exclusive else open_writer(settings)
            ingest_writer = writer if exclusive else open_writer(settings)
            # Ended days of the rollups become sums (analytics/rollup_settle.py).
            settling = asyncio.create_task(
                settle_loop(Settler(settle_writer, visit_gap_s=settings.visit_gap_s), stop)
            )
            try:
                await run_pipeline(settings, ingest_writer, metrics, stop)
            finally:
                if ingest_writer is not writer:
                    await ingest_writer.close()
                # A day cut short stays marked unsettled; the next start finishes it.
                settling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await settling
                if settle_writer is not writer:
                    await settle_writer.close()
        finally:
            await runner.cleanup()
    finally:
        await reader.close()
        await writer.close()
    log.info("consumer stopped")
