"""The collector's aiohttp application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from collector.buffer import EventBuffer
from collector.destinations import CLICK_PATH
from collector.geo import load_countries
from collector.handlers import MAX_BODY_BYTES, Collector
from collector.limits import body_guard
from collector.metrics import CollectorMetrics
from collector.networks import load_networks
from collector.privacy import VisitorHasher
from collector.ratelimit import rate_limit_buckets, rate_limit_middlewares
from collector.redirect import ClickRedirect
from collector.settings import Settings
from collector.signing import SignatureGate, load_keyring
from collector.sinks import Sink
from collector.sinks.kafka import KafkaSink
from collector.snippet import SCRIPTS, ScriptHandler
from collector.spool.wal import make_wal

COLLECTOR = web.AppKey("collector", Collector)


def unrouted(metrics: CollectorMetrics) -> Handler:
    """aiohttp's own 404 or 405 (with Allow), counted in beacon_requests{endpoint="unrouted"}."""

    async def answer(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not request.match_info.route.resource:  # this catch-all
                allowed |= (await resource.resolve(request))[1]
        if allowed:
            metrics.requests.labels("unrouted", "405").inc()
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        metrics.requests.labels("unrouted", "404").inc()
        raise web.HTTPNotFound()

    return answer


def create_app(settings: Settings, sink: Sink, metrics: CollectorMetrics) -> web.Application:
    """Routes and buffer around a sink the caller made (sharing `metrics` with it).

    The sink is flushed and closed on cleanup.
    """
    if not settings.secret:
        raise ValueError("settings.secret is empty: resolve it before building the app")
    kafka = sink if isinstance(sink, KafkaSink) else None
    # With Kafka, a closed log segment wakes the replay that ships it (less latency).
    wal = make_wal(settings, metrics, kafka.replayer.wake if kafka else None)
    if wal is not None and kafka is not None:
        # Full, the log takes no event, so closes no segment and never recounts on its own:
        # the room the replay frees must reach it at once, not at the next flush interval.
        kafka.recounts.append(wal.rescan)
    buffer = EventBuffer(
        sink,
        metrics,
        max_events=settings.buffer_max_events,
        max_bytes=settings.buffer_max_bytes,
        linger_ms=settings.linger_ms,
        flush_interval_ms=settings.flush_interval_ms,
        idle_flush_ms=settings.spool_segment_idle_ms,
        wal=wal,
    )
    keyring = load_keyring(settings.signing_keys, settings.signing_key_file)
    gate = SignatureGate(keyring, settings.signature_policy, metrics)
    hasher = VisitorHasher(settings.secret.encode())
    # Each read once per process, kept for the next app.
    countries = load_countries(settings.geo_db)
    networks = load_networks(settings.network_db)
    collector = Collector(settings, buffer, metrics, hasher, gate, countries, networks)
    collector.rate_buckets = rate_limit_buckets(settings)  # None when off: no middleware
    clicks = ClickRedirect(collector, keyring)

    # aiohttp enforces this while reading the body, also for chunked uploads without a length.
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=rate_limit_middlewares(collector),
    )
    app[COLLECTOR] = collector
    app.router.add_get("/p.gif", collector.pixel)  # add_get answers HEAD too
    app.router.add_post("/e", body_guard(collector.events, settings.body_timeout_ms, metrics))
    app.router.add_route("OPTIONS", "/e", collector.preflight)
    app.router.add_get(CLICK_PATH, clicks.click)  # signed click redirects (HEAD: no event)
    for script in SCRIPTS:  # the web snippet (t.js) and the ad viewability tag (a.js)
        app.router.add_get(script.path, ScriptHandler(script, metrics).serve)
    app.router.add_get("/healthz", collector.healthz)
    app.router.add_get("/readyz", collector.readyz)
    app.router.add_get("/metrics", collector.metrics_page)
    app.router.add_get("/robots.txt", collector.robots)
    # Last, so it only sees what no route above took: unknown paths and methods, counted.
    app.router.add_route("*", "/{tail:.*}", unrouted(metrics))

    async def run_buffer(app: web.Application) -> AsyncIterator[None]:
        buffer.start()
        yield
        await buffer.close()  # flushes the last events to the sink and closes it

    app.cleanup_ctx.append(run_buffer)
    return app
