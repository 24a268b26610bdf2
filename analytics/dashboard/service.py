"""`beacon dashboard`: a small read service for the dashboard in front of a ClickHouse server.

In embedded mode the process that owns the store serves the dashboard on its port already
(chDB lets one process open the store); this command is for the distributed setup.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from analytics.connect import open_reader
from analytics.dashboard.app import add_dashboard
from analytics.settings import StoreSettings
from analytics.store.readers import Reader
from analytics.web import WebConfig

log = logging.getLogger("beacon.dashboard")


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--listen", help="address to listen on (env BEACON_DASHBOARD_HOST)")
    sub.add_argument("--listen-port", type=int, help="port (env BEACON_DASHBOARD_PORT)")


REGISTRY = web.AppKey("dashboard_registry", CollectorRegistry)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_dashboard_app(
    reader: Reader, token: str, web_config: WebConfig | None = None
) -> web.Application:
    """The dashboard, /healthz, and /metrics for Prometheus (its requests by outcome)."""
    app = web.Application(client_max_size=64 * 1024)
    app[REGISTRY] = CollectorRegistry()
    add_dashboard(app, reader, token, app[REGISTRY], web_config)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(settings: StoreSettings, host: str, port: int) -> None:
    reader = open_reader(settings)  # the server's: dashboard_command requires its URL
    app = create_dashboard_app(reader, settings.dashboard_token, WebConfig.from_settings(settings))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("dashboard on http://%s:%d/dashboard", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await reader.close()


def dashboard_command(settings: StoreSettings, args: argparse.Namespace) -> int:
    if not settings.dashboard_token:
        print(
            "beacon dashboard: set BEACON_DASHBOARD_TOKEN (a long random string)", file=sys.stderr
        )
        return 2
    if not settings.clickhouse_url:
        where = f"http://{settings.store_host}:{settings.store_port}/dashboard"
        print(f"beacon dashboard: without BEACON_CLICKHOUSE_URL the process that owns the "
              f"embedded store serves it, at {where}", file=sys.stderr)  # fmt: skip
        return 2
    import uvloop

    host = args.listen or settings.dashboard_host
    port = args.listen_port if args.listen_port is not None else settings.dashboard_port
    uvloop.run(serve(settings, host, port))
    return 0
