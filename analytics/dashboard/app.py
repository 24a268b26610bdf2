"""The dashboard's routes, behind a token: GET /dashboard, /dashboard/data.json,
/dashboard/realtime.json and the page's script /dashboard/realtime.js; sign in and out.

The token (BEACON_DASHBOARD_TOKEN) comes as `Authorization: Bearer <token>`, or once through
the sign-in form, which sets a session cookie: an expiry and an HMAC of it keyed with the
token (changing the token ends every session; the cookie never holds the token). Never in the
URL, where it would end up in logs and browser history. Without a token, no dashboard.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from html import escape

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from analytics.dashboard.data import dashboard_data
from analytics.dashboard.filters import Selection, parse_selection
from analytics.dashboard.page import dashboard_page
from analytics.dashboard.script import REALTIME_JS
from analytics.dashboard.style import login_page
from analytics.dashboard.web_figures import realtime_figures
from analytics.funnel import Query
from analytics.report_window import Window
from analytics.store import StoreError
from analytics.store.readers import LIMIT_SETTINGS, NoAnswer, Reader, read_failure
from analytics.views import refused_filters
from analytics.web import WebConfig
from contract.numbers import parse_uint

log = logging.getLogger("beacon.dashboard")

COOKIE = "beacon_dashboard"
SESSION_S = 12 * 3600
FAILED_LOGIN_DELAY_S = 0.5  # slows guessing; a long random token is what really stops it
# How long past a read's own time limit (BEACON_STORE_QUERY_TIMEOUT_S) the page waits for it:
# ClickHouse checks the limit between blocks, so a read may overrun it a little.
QUERY_WAIT_MARGIN_S = 10.0
# Pages computed at once. Each holds a worker thread while its queries run on the loop (and,
# for chDB, on more worker threads): without a bound, enough of them would take every thread.
CONCURRENT_PAGES = 2
# The largest expiry a session cookie may name: the year 5138, far beyond any real one.
MAX_EXPIRES_S = 10**11 - 1
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
# The dashboard page alone may run its one same-origin script (no inline script, nothing
# from elsewhere), and that script may fetch from this origin: the realtime tile's refresh.
PAGE_HEADERS = {
    **HEADERS,
    "Content-Security-Policy": f"{CSP}; script-src 'self'; connect-src 'self'",
}


class Auth:
    """The token check and the session cookie; every comparison in constant time."""

    def __init__(self, token: str, clock: Callable[[], float] = time.time) -> None:
        self.key = token.encode()
        self.digest = hashlib.sha256(self.key).digest()
        self.clock = clock

    def token_ok(self, given: str) -> bool:
        # Digests of equal length: compare_digest would leak the token's length otherwise.
        # surrogatepass: a header that is not UTF-8 reaches here with lone surrogates.
        given_bytes = given.encode("utf-8", "surrogatepass")
        return hmac.compare_digest(hashlib.sha256(given_bytes).digest(), self.digest)

    def _mac(self, expires: int) -> str:
        return hmac.new(self.key, f"dashboard-session:{expires}".encode(), "sha256").hexdigest()

    def new_session(self) -> str:
        expires = int(self.clock()) + SESSION_S
        return f"{expires}.{self._mac(expires)}"

    def session_ok(self, value: str) -> bool:
        text, _, mac = value.partition(".")
        # Only the form new_session writes is read; anything else is refused, never raised
        # (compare_digest raises TypeError on a non-ASCII str).
        expires = parse_uint(text, MAX_EXPIRES_S, canonical=True)
        if expires is None or expires < self.clock() or not mac.isascii():
            return False
        return hmac.compare_digest(mac, self._mac(expires))

    def allowed(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            return self.token_ok(given.strip())
        return self.session_ok(request.cookies.get(COOKIE, ""))


AUTH = web.AppKey("dashboard_auth", Auth)
DASHBOARD_READER = web.AppKey("dashboard_reader", Reader)
SLOTS = web.AppKey("dashboard_slots", asyncio.Semaphore)
WEB = web.AppKey("dashboard_web", WebConfig)
READS = web.AppKey("dashboard_reads", Counter)
SIGN_INS = web.AppKey("dashboard_sign_ins", Counter)
# The labels of beacon_dashboard_reads_total and beacon_dashboard_sign_ins_total, each made at
# 0 with its counter (tests/unit/test_metric_labels.py checks the handlers give no other). A
# read that stops at a limit is answered with the limit's name, and counted here, so that an
# operator sees which limit the dashboard's readers meet (docs/operations.md, Memory).
READ_ENDPOINTS = ("page", "data", "realtime")
READ_OUTCOMES = ("ok", "unauthorized", "bad_request", "memory_limit", "timeout", "unavailable",
                 "error", "client_gone")  # fmt: skip
SIGN_IN_OUTCOMES = ("signed_in", "refused", "bad_request")
Answer = tuple[str, web.Response]  # the outcome counted, and the response


def html(text: str, status: int = 200, headers: dict[str, str] = HEADERS) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=headers)


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=HEADERS
    )


def parse(request: web.Request) -> Selection:
    """The range, grouping and filters of the query string; raises ValueError."""
    names = [name for name, _ in request.query.items()]
    return parse_selection(request.query, names, request.app[WEB].goals)


def reader_query(request: web.Request) -> Query:
    """A query function for a worker thread, asking the reader on this loop."""
    reader, loop = request.app[DASHBOARD_READER], asyncio.get_running_loop()

    wait_s = reader.limits.timeout_s + QUERY_WAIT_MARGIN_S

    def query(sql: str) -> str:
        future = asyncio.run_coroutine_threadsafe(reader.query(sql, "JSONEachRow"), loop)
        try:
            return future.result(wait_s)
        except TimeoutError:
            future.cancel()  # the reader stops the read (KILL QUERY, or the server on hang-up)
            raise NoAnswer(f"no answer within {wait_s:g} s") from None

    return query


async def numbers(request: web.Request, selection: Selection) -> dict:
    """The dashboard's data, computed in a thread that asks the reader on this loop."""
    window = Window.last_days(selection.days, dt.datetime.now(dt.UTC))
    args = (window, selection.group, selection.filters(), request.app[WEB])
    async with request.app[SLOTS]:
        return await asyncio.to_thread(dashboard_data, reader_query(request), *args)


def counted(
    endpoint: str, handler: Callable[[web.Request], Awaitable[Answer]]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A read endpoint: `handler`'s response, its outcome counted under `endpoint`."""

    async def handle(request: web.Request) -> web.Response:
        outcome = "client_gone"  # what a handler cancelled because its client left is counted as
        try:
            outcome, response = await handler(request)
            return response
        except Exception:
            outcome = "error"  # answered 500 by aiohttp: a fault of this code, logged there
            raise
        finally:
            request.app[READS].labels(endpoint, outcome).inc()

    return handle


async def page(request: web.Request) -> Answer:
    if not request.app[AUTH].allowed(request):
        return "unauthorized", html(login_page(), 401)
    try:
        selection = parse(request)
    except ValueError as exc:
        return "bad_request", html(f"<p>Bad request: {escape(str(exc))}</p>", 400)
    try:
        data = await numbers(request, selection)
    except StoreError as exc:
        log.warning("dashboard query failed: %r", str(exc)[:300])  # %r: no forged log lines
        reason, status = store_refusal(exc)
        return reason, html(f"<p>{escape(REFUSAL_TEXT[reason])}</p>", status)
    return "ok", html(dashboard_page(data, selection), headers=PAGE_HEADERS)


# What the page says when a read fails: a read over its memory or time limit fails again the
# same way, so only the store's own failures ask for another try.
REFUSAL_TEXT = {
    "memory_limit": "These days take more memory to read than a read may use "
    f"({LIMIT_SETTINGS['memory_limit']}): choose fewer days or a filter.",
    "timeout": "These days take longer to read than a read may "
    f"({LIMIT_SETTINGS['timeout']}): choose fewer days or a filter.",
    "unavailable": "The store did not answer; try again in a moment.",
}


def store_refusal(exc: StoreError) -> tuple[str, int]:
    """Why a read of the dashboard failed (a key of REFUSAL_TEXT) and the status to answer."""
    if isinstance(exc, NoAnswer):
        return "timeout", 504
    outcome, status = read_failure(str(exc))
    if outcome in ("memory_limit", "timeout"):
        return outcome, status
    return "unavailable", 503


def store_refusal_json(exc: StoreError) -> Answer:
    """The JSON answer of an endpoint whose read failed (store_refusal)."""
    reason, status = store_refusal(exc)
    body = {"error": "store", "reason": reason, "detail": str(exc)[:500]}
    return reason, json_response(body, status)


async def data_json(request: web.Request) -> Answer:
    if not request.app[AUTH].allowed(request):
        return "unauthorized", json_response({"error": "unauthorized"}, 401)
    try:
        data = await numbers(request, parse(request))
    except ValueError as exc:
        return "bad_request", json_response({"error": str(exc)}, 400)
    except StoreError as exc:
        return store_refusal_json(exc)
    return "ok", json_response(data)


async def realtime_json(request: web.Request) -> Answer:
    """Visitors and page views of the last 5 minutes, for the page's realtime tile."""
    if not request.app[AUTH].allowed(request):
        return "unauthorized", json_response({"error": "unauthorized"}, 401)
    try:
        filters = parse(request).filters()
    except ValueError as exc:
        return "bad_request", json_response({"error": str(exc)}, 400)
    # Campaign and ad filter the page's email and ad half; realtime visitors are by site.
    refused = refused_filters("realtime", filters, prefix="")
    if refused:
        return "bad_request", json_response({"error": refused}, 400)
    at = dt.datetime.now(dt.UTC)
    try:
        async with request.app[SLOTS]:
            found = await asyncio.to_thread(
                realtime_figures, reader_query(request), filters, request.app[WEB]
            )
    except StoreError as exc:
        return store_refusal_json(exc)
    return "ok", json_response({**found, "at": at.strftime("%Y-%m-%dT%H:%M:%SZ")})


async def realtime_js(request: web.Request) -> web.Response:
    if not request.app[AUTH].allowed(request):
        return web.Response(status=401, text="unauthorized\n", headers=HEADERS)
    return web.Response(text=REALTIME_JS, content_type="text/javascript", headers=HEADERS)


async def login(request: web.Request) -> web.Response:
    try:
        form = await request.post()
    except web.HTTPException:  # aiohttp's answer to a form it would not read (too large)
        request.app[SIGN_INS].labels("bad_request").inc()
        raise
    token = form.get("token")
    if not isinstance(token, str) or not request.app[AUTH].token_ok(token):
        request.app[SIGN_INS].labels("refused").inc()
        log.warning("dashboard sign-in refused from %s", request.remote)
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)
        return html(login_page("That is not the dashboard token."), 401)
    request.app[SIGN_INS].labels("signed_in").inc()
    response = see_dashboard()
    response.set_cookie(
        COOKIE, request.app[AUTH].new_session(), max_age=SESSION_S, path="/dashboard",
        httponly=True, samesite="Strict", secure=request.secure,
    )  # fmt: skip
    return response


def see_dashboard() -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": "/dashboard"})


async def logout(request: web.Request) -> web.Response:
    response = see_dashboard()
    response.del_cookie(COOKIE, path="/dashboard")
    return response


async def disabled(request: web.Request) -> web.Response:
    return web.Response(status=404, text="no dashboard: set BEACON_DASHBOARD_TOKEN\n")


def add_dashboard(
    app: web.Application,
    reader: Reader,
    token: str,
    registry: CollectorRegistry,
    web_config: WebConfig | None = None,
) -> None:
    """The dashboard routes on `app`, reading through `reader`, counted in `registry`, visits
    made as `web_config` says; without a token, a 404."""
    if not token:
        app.router.add_route("*", "/dashboard", disabled)
        return
    app[AUTH] = Auth(token)
    app[DASHBOARD_READER] = reader
    app[SLOTS] = asyncio.Semaphore(CONCURRENT_PAGES)
    app[WEB] = web_config or WebConfig()
    app[READS] = Counter(
        "beacon_dashboard_reads",
        "Dashboard reads by endpoint (page, data, realtime) and outcome (ok, unauthorized, "
        "bad_request, memory_limit, timeout, unavailable, error, client_gone).",
        ["endpoint", "outcome"],
        registry=registry,
    )
    for endpoint in READ_ENDPOINTS:
        for outcome in READ_OUTCOMES:
            app[READS].labels(endpoint, outcome)
    app[SIGN_INS] = Counter(
        "beacon_dashboard_sign_ins",
        "Dashboard sign-in forms by outcome (signed_in, refused, bad_request).",
        ["outcome"],
        registry=registry,
    )
    for outcome in SIGN_IN_OUTCOMES:
        app[SIGN_INS].labels(outcome)
    app.router.add_get("/dashboard", counted("page", page))
    app.router.add_get("/dashboard/data.json", counted("data", data_json))
    app.router.add_get("/dashboard/realtime.json", counted("realtime", realtime_json))
    app.router.add_get("/dashboard/realtime.js", realtime_js)
    app.router.add_post("/dashboard/login", login)
    app.router.add_post("/dashboard/logout", logout)
