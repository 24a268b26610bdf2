"""The store owner's local query port: chDB allows one process per data directory, so
`beacon report` and friends ask the process that has it open.

Listens on loopback only and runs read-only statements only.
"""

from __future__ import annotations

import re

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumers.writers import StoreError, Writer

READ_ONLY_RE = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b", re.IGNORECASE)
FORMAT_RE = re.compile(r"^[A-Za-z]{1,40}$")
MAX_SQL_BYTES = 256 * 1024

WRITER = web.AppKey("writer", Writer)
REGISTRY = web.AppKey("registry", CollectorRegistry)


async def query(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "JSONEachRow")
    if not FORMAT_RE.match(fmt):
        return web.json_response({"error": "bad_format"}, status=400)
    sql = (await request.read()).decode("utf-8", "replace")
    if ";" in sql.rstrip().rstrip(";") or not READ_ONLY_RE.match(sql):
        return web.json_response(
            {"error": "read_only", "detail": "one SELECT-like statement"}, status=403
        )
    try:
        out = await request.app[WRITER].query(sql, fmt)
    except StoreError as exc:
        return web.json_response({"error": "query_failed", "detail": str(exc)[:2000]}, status=400)
    return web.Response(text=out, content_type="text/plain")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_query_app(writer: Writer, registry: CollectorRegistry) -> web.Application:
    app = web.Application(client_max_size=MAX_SQL_BYTES)
    app[WRITER] = writer
    app[REGISTRY] = registry
    app.router.add_post("/query", query)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
