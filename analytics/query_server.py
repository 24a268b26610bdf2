"""The store owner's local query port: chDB allows one process per data directory, so
`beacon report` and friends ask the process that has it open.

Runs read-only statements only, for loopback clients that name a loopback host (the port may
listen wider so Prometheus can scrape /metrics); the one write is POST /erase, a data subject
request that names a field and a value, never SQL (analytics/erasure.py).
GET /dashboard is the read-only dashboard, behind its token (analytics/dashboard/).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from pathlib import Path
from typing import NamedTuple

import orjson
import yarl
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from analytics import erasure
from analytics.dashboard.app import add_dashboard
from analytics.store import StoreError, Writer, read_guard
from analytics.store.readers import LIMIT_SETTINGS, Busy, Reader, read_failure
from analytics.web import WebConfig

FORMAT_RE = re.compile(r"^[A-Za-z]{1,40}\Z")
MAX_SQL_BYTES = 256 * 1024
QUERY_KEYS = frozenset({"sql", "format"})
QUERY_SHAPE = "expected {sql, format} strings"

log = logging.getLogger("beacon.query_server")

WRITER = web.AppKey("writer", Writer)
READER = web.AppKey("reader", Reader)
REGISTRY = web.AppKey("registry", CollectorRegistry)
AUDIT_PATH = web.AppKey("audit_path", Path)
ERASE_REQUESTS = web.AppKey("erase_requests", Counter)
# Erasures under way, whose clients may have gone: a stop waits for them (finish_erasures),
# this long at most.
ERASING = web.AppKey("erasing", set[asyncio.Task["Outcome"]])
ERASE_STOP_WAIT_S = 30.0
QUERY_REQUESTS = web.AppKey("query_requests", Counter)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
LOCAL_ORIGIN_HOSTS = frozenset(h.strip("[]") for h in LOCAL_HOSTS)  # as yarl reads a host
ERASE_KEYS = frozenset({"field", "value", "by"})
# The outcome labels of beacon_store_queries_total and beacon_erase_requests_total, each made at
# 0 with the counter (tests/unit/test_metric_labels.py checks the handlers give no other).
QUERY_OUTCOMES = ("ok", "not_local", "cross_origin", "bad_request", "busy", "not_read_only",
                  "timeout", "too_large", "memory_limit", "failed", "error",
                  "client_gone")  # fmt: skip
ERASE_OUTCOMES = ("erased", "bad_request", "not_local", "store_failed", "audit_failed")


async def query(request: web.Request) -> web.Response:
    """POST /query {"sql": "<one SELECT>", "format": "<ClickHouse output format>"}."""
    outcome = "client_gone"  # what a handler cancelled because its client left is counted as
    try:
        outcome, response = await _query(request)
        return response
    except Exception:
        outcome = "error"  # answered 500 by aiohttp: a fault of this code, logged there
        raise
    finally:
        request.app[QUERY_REQUESTS].labels(outcome).inc()


async def _query(request: web.Request) -> tuple[str, web.Response]:
    # Every event is readable here: a page the browser loads from a rebound name, or a
    # neighbour on the network when the port listens wider, must not get in.
    if not is_local(request):
        return "not_local", web.json_response({"error": "loopback_only"}, status=403)
    # A page the operator has open may post here from its own origin: refuse any request a
    # browser marks as sent by another site. JSON only: a cross-site page cannot send it
    # without a CORS preflight, which this port never grants.
    if is_cross_site(request):
        return "cross_origin", web.json_response({"error": "cross_origin"}, status=403)
    if request.content_type != "application/json":
        return "bad_request", web.json_response({"error": "unsupported_media_type"}, status=415)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return "bad_request", web.json_response({"error": "malformed_json"}, status=400)
    if not isinstance(body, dict) or not set(body) <= QUERY_KEYS:
        return "bad_request", web.json_response({"error": QUERY_SHAPE}, status=400)
    sql, fmt = body.get("sql"), body.get("format", "JSONEachRow")
    if not isinstance(sql, str) or not isinstance(fmt, str):
        return "bad_request", web.json_response({"error": QUERY_SHAPE}, status=400)
    if not FORMAT_RE.match(fmt):
        return "bad_request", web.json_response({"error": "bad_format"}, status=400)
    try:
        out = await request.app[READER].query(sql, fmt)
    except Busy as exc:
        answer = {"error": "busy", "detail": str(exc)}
        return "busy", web.json_response(answer, status=503, headers={"Retry-After": "1"})
    except read_guard.Refused as exc:
        answer = {"error": "read_only", "detail": f"one SELECT of beacon tables ({exc.reason})"}
        return "not_read_only", web.json_response(answer, status=403)
    except StoreError as exc:
        outcome, status = read_failure(str(exc))
        answer = {"error": f"query_{outcome}", "detail": str(exc)[:2000]}
        if outcome in LIMIT_SETTINGS:  # the setting that would let the read through
            answer["limit"] = LIMIT_SETTINGS[outcome]
        return outcome, web.json_response(answer, status=status)
    return "ok", web.Response(text=out, content_type="text/plain")


def is_cross_site(request: web.Request) -> bool:
    """A request a browser sent for another site's page (Origin, or Fetch Metadata)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False  # curl, `beacon report`: no browser, no page
    try:
        host = yarl.URL(origin).host
    except ValueError:
        return True
    return host not in LOCAL_ORIGIN_HOSTS


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


class Outcome(NamedTuple):
    """An erasure request's outcome (its count's label), HTTP status and answer."""

    outcome: str
    status: int
    answer: dict[str, object]


async def erase(request: web.Request) -> web.Response:
    """POST /erase {"field": "recipient"|"visitor"|"site", "value": "...", "by": "..."}."""
    asked = await _erase_request(request)
    if isinstance(asked, Outcome):
        request.app[ERASE_REQUESTS].labels(asked.outcome).inc()
        return web.json_response(asked.answer, status=asked.status)
    # Once read, the erasure runs to its audit line and its count whatever the client does:
    # one that stops waiting (a rebuild past `beacon erase`'s timeout) cancels this handler,
    # and an erasure cut after its DELETE left rows gone unrecorded.
    app = request.app
    task = asyncio.create_task(_erase(app, *asked))
    app[ERASING].add(task)  # held: the loop keeps only a weak reference to a task
    task.add_done_callback(lambda done: _erased(app, done))
    _, status, answer = await asyncio.shield(task)
    return web.json_response(answer, status=status)


def _erased(app: web.Application, task: asyncio.Task[Outcome]) -> None:
    app[ERASING].discard(task)
    if not task.cancelled() and task.exception() is not None:  # its client may be gone
        log.error("an erasure failed", exc_info=task.exception())


async def finish_erasures(app: web.Application) -> None:
    """A stop waits for the erasures under way, up to ERASE_STOP_WAIT_S."""
    erasing = app[ERASING]
    running = set(erasing)
    if not running:
        return
    _, cut = await asyncio.wait(running, timeout=ERASE_STOP_WAIT_S)
    if cut:  # their days are left due: the settle loop rebuilds them at the next start
        log.error("%d erasures still running at the stop are cut before their audit lines: "
                  "run them again", len(cut))  # fmt: skip


async def _erase_request(request: web.Request) -> tuple[str, str, str] | Outcome:
    """The (field, value, by) asked for, or the answer why none is."""
    if not is_local(request):
        return Outcome("not_local", 403, {"error": "loopback_only"})
    # JSON only: a cross-site form or sendBeacon cannot send it without a CORS preflight,
    # which this port never grants.
    if request.content_type != "application/json":
        return Outcome("bad_request", 415, {"error": "unsupported_media_type"})
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return Outcome("bad_request", 400, {"error": "malformed_json"})
    if (
        not isinstance(body, dict)
        or not set(body) <= ERASE_KEYS
        or not all(isinstance(v, str) for v in body.values())
    ):
        return Outcome("bad_request", 400, {"error": "expected {field, value, by} strings"})
    field, value = body.get("field", ""), body.get("value", "")
    try:
        erasure.condition(field, value)
    except erasure.RequestError as exc:
        return Outcome("bad_request", 400, {"error": exc.reason})
    return field, value, body.get("by") or "store-port client"


async def _erase(app: web.Application, field: str, value: str, by: str) -> Outcome:
    outcome = await _erase_and_audit(app, field, value, by)
    app[ERASE_REQUESTS].labels(outcome.outcome).inc()
    return outcome


async def _erase_and_audit(app: web.Application, field: str, value: str, by: str) -> Outcome:
    audit_path = app[AUDIT_PATH]
    try:
        erasure.check_audit(audit_path)
        rows = await erasure.erase(app[WRITER], field, value)
    # Logged too: the client may have stopped waiting (`beacon erase` past its wait).
    except OSError as exc:
        log.error("an erasure by %s refused: the audit log is not writable: %s", field, exc)
        return Outcome("audit_failed", 503, {"error": "audit_log_not_writable", "detail": str(exc)})
    except StoreError as exc:
        log.error("an erasure by %s failed in the store: %s", field, exc)
        return Outcome("store_failed", 503, {"error": "store_failed", "detail": str(exc)[:2000]})
    try:
        erasure.audit(audit_path, "erase", field, value, rows, "store_port", by)
    except OSError as exc:  # erased, but not recorded: say so, loudly
        log.error("erased %d rows but could not write the audit log: %s", rows, exc)
        detail = {"error": "audit_failed", "rows": rows, "detail": str(exc)}
        return Outcome("audit_failed", 503, detail)
    return Outcome("erased", 200, {"rows": rows})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_query_app(
    writer: Writer,
    reader: Reader,
    registry: CollectorRegistry,
    audit_path: Path | None = None,
    dashboard_token: str = "",
    web_config: WebConfig | None = None,
) -> web.Application:
    """The query port; with `audit_path`, also POST /erase (each erasure audited there); with
    `dashboard_token`, the dashboard page (analytics/dashboard/), its visits as `web_config`
    says."""
    app = web.Application(client_max_size=MAX_SQL_BYTES)
    app[WRITER] = writer
    app[READER] = reader
    app[REGISTRY] = registry
    app[QUERY_REQUESTS] = Counter(
        "beacon_store_queries",
        "POST /query requests by outcome (ok, not_local, cross_origin, not_read_only, "
        "bad_request, busy, timeout, too_large, memory_limit, failed, error, client_gone).",
        ["outcome"],
        registry=registry,
    )
    for outcome in QUERY_OUTCOMES:
        app[QUERY_REQUESTS].labels(outcome)
    app.router.add_post("/query", query)
    if audit_path is not None:
        app[AUDIT_PATH] = audit_path
        app[ERASING] = set()
        app.on_shutdown.append(finish_erasures)
        app[ERASE_REQUESTS] = Counter(
            "beacon_erase_requests",
            "POST /erase requests by outcome (erased, bad_request, not_local, store_failed, "
            "audit_failed).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ERASE_OUTCOMES:
            app[ERASE_REQUESTS].labels(outcome)
        app.router.add_post("/erase", erase)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    add_dashboard(app, reader, dashboard_token, registry, web_config)
    return app
