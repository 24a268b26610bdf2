"""The store owner's local query port: chDB allows one process per data directory, so
`beacon report` and friends ask the process that has it open.

Runs read-only statements only, for loopback clients that name a loopback host (the port may
listen wider so Prometheus can scrape /metrics); the one write is POST /erase, a data subject
request that names a field and a value, never SQL (consumers/erasure.py).
GET /dashboard is the read-only dashboard, behind its token (consumers/dashboard/).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from consumers import erasure
from consumers.dashboard.app import add_dashboard
from consumers.writers import StoreError, Writer

READ_ONLY_RE = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b", re.IGNORECASE)
FORMAT_RE = re.compile(r"^[A-Za-z]{1,40}$")
MAX_SQL_BYTES = 256 * 1024

log = logging.getLogger("beacon.query_server")

WRITER = web.AppKey("writer", Writer)
REGISTRY = web.AppKey("registry", CollectorRegistry)
AUDIT_PATH = web.AppKey("audit_path", Path)
ERASE_REQUESTS = web.AppKey("erase_requests", Counter)
QUERY_REQUESTS = web.AppKey("query_requests", Counter)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
ERASE_KEYS = frozenset({"field", "value", "by"})


async def query(request: web.Request) -> web.Response:
    """POST /query?format=F with one read-only statement as the body."""
    outcome, response = await _query(request)
    request.app[QUERY_REQUESTS].labels(outcome).inc()
    return response


async def _query(request: web.Request) -> tuple[str, web.Response]:
    # Every event is readable here: a page the browser loads from a rebound name, or a
    # neighbour on the network when the port listens wider, must not get in.
    if not is_local(request):
        return "not_local", web.json_response({"error": "loopback_only"}, status=403)
    fmt = request.query.get("format", "JSONEachRow")
    if not FORMAT_RE.match(fmt):
        return "bad_request", web.json_response({"error": "bad_format"}, status=400)
    sql = (await request.read()).decode("utf-8", "replace")
    if ";" in sql.rstrip().rstrip(";") or not READ_ONLY_RE.match(sql):
        return "not_read_only", web.json_response(
            {"error": "read_only", "detail": "one SELECT-like statement"}, status=403
        )
    try:
        out = await request.app[WRITER].query(sql, fmt)
    except StoreError as exc:
        answer = {"error": "query_failed", "detail": str(exc)[:2000]}
        return "failed", web.json_response(answer, status=400)
    return "ok", web.Response(text=out, content_type="text/plain")


def is_local(request: web.Request) -> bool:
    """A loopback peer that also named a loopback host.

    The Host check stops DNS rebinding: a web page whose own name now resolves to 127.0.0.1
    reaches this port as a loopback peer, but with its own name in Host.
    """
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    return peer.is_loopback and request.host.rsplit(":", 1)[0].lower() in LOCAL_HOSTS


async def erase(request: web.Request) -> web.Response:
    """POST /erase {"field": "recipient"|"visitor"|"site", "value": "...", "by": "..."}."""
    outcome, status, answer = await _erase(request)
    request.app[ERASE_REQUESTS].labels(outcome).inc()
    return web.json_response(answer, status=status)


async def _erase(request: web.Request) -> tuple[str, int, dict[str, object]]:
    if not is_local(request):
        return "not_local", 403, {"error": "loopback_only"}
    # JSON only: a cross-site form or sendBeacon cannot send it without a CORS preflight,
    # which this port never grants.
    if request.content_type != "application/json":
        return "bad_request", 415, {"error": "unsupported_media_type"}
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return "bad_request", 400, {"error": "malformed_json"}
    if (
        not isinstance(body, dict)
        or not set(body) <= ERASE_KEYS
        or not all(isinstance(v, str) for v in body.values())
    ):
        return "bad_request", 400, {"error": "expected {field, value, by} strings"}
    field, value = body.get("field", ""), body.get("value", "")
    audit_path = request.app[AUDIT_PATH]
    try:
        erasure.condition(field, value)
        erasure.check_audit(audit_path)
        rows = await erasure.erase(request.app[WRITER], field, value)
    except erasure.RequestError as exc:
        return "bad_request", 400, {"error": exc.reason}
    except OSError as exc:
        return "audit_failed", 503, {"error": "audit_log_not_writable", "detail": str(exc)}
    except StoreError as exc:
        return "store_failed", 503, {"error": "store_failed", "detail": str(exc)[:2000]}
    by = body.get("by") or "store-port client"
    try:
        erasure.audit(audit_path, "erase", field, value, rows, "store_port", by)
    except OSError as exc:  # erased, but not recorded: say so, loudly
        log.error("erased %d rows but could not write the audit log: %s", rows, exc)
        return "audit_failed", 503, {"error": "audit_failed", "rows": rows, "detail": str(exc)}
    return "erased", 200, {"rows": rows}


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_query_app(
    writer: Writer,
    registry: CollectorRegistry,
    audit_path: Path | None = None,
    dashboard_token: str = "",
) -> web.Application:
    """The query port; with `audit_path`, also POST /erase (each erasure audited there); with
    `dashboard_token`, the dashboard page (consumers/dashboard/)."""
    app = web.Application(client_max_size=MAX_SQL_BYTES)
    app[WRITER] = writer
    app[REGISTRY] = registry
    app[QUERY_REQUESTS] = Counter(
        "beacon_store_queries",
        "POST /query requests by outcome (ok, not_local, not_read_only, bad_request, failed).",
        ["outcome"],
        registry=registry,
    )
    app.router.add_post("/query", query)
    if audit_path is not None:
        app[AUDIT_PATH] = audit_path
        app[ERASE_REQUESTS] = Counter(
            "beacon_erase_requests",
            "POST /erase requests by outcome (erased, bad_request, not_local, store_failed, "
            "audit_failed).",
            ["outcome"],
            registry=registry,
        )
        app.router.add_post("/erase", erase)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    add_dashboard(app, writer, dashboard_token)
    return app
