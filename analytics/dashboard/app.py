"""The dashboard's routes, behind a token: GET /dashboard, /dashboard/data.json, sign in/out.

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
from collections.abc import Callable
from html import escape

import orjson
from aiohttp import web

from analytics.dashboard.data import dashboard_data
from analytics.dashboard.page import dashboard_page, login_page
from analytics.report_window import Filters, Window
from analytics.store import StoreError
from analytics.store.readers import Reader
from contract.numbers import parse_uint

log = logging.getLogger("beacon.dashboard")

COOKIE = "beacon_dashboard"
SESSION_S = 12 * 3600
FAILED_LOGIN_DELAY_S = 0.5  # slows guessing; a long random token is what really stops it
QUERY_TIMEOUT_S = 60
# Pages computed at once. Each holds a worker thread while its queries run on the loop (and,
# for chDB, on more worker threads): without a bound, enough of them would take every thread.
CONCURRENT_PAGES = 2
MAX_DAYS = 400
MAX_ID_CHARS = 256
# The largest expiry a session cookie may name: the year 5138, far beyond any real one.
MAX_EXPIRES_S = 10**11 - 1
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
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


def html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=HEADERS)


def parse(request: web.Request) -> tuple[int, str, Filters]:
    """days, group and filters from the query string; raises ValueError."""
    days = parse_uint(request.query.get("days", "7"), MAX_DAYS, min_value=1)
    if days is None:
        raise ValueError(f"days: 1 to {MAX_DAYS}")
    group = request.query.get("group") or ("hour" if days <= 2 else "day")
    if group not in ("hour", "day"):
        raise ValueError("group: hour or day")
    ids = {k: request.query.get(k) or None for k in ("site", "campaign")}
    if any(v is not None and len(v) > MAX_ID_CHARS for v in ids.values()):
        raise ValueError("site, campaign: too long")
    return days, group, Filters(ids["site"], ids["campaign"])


async def numbers(request: web.Request, days: int, group: str, filters: Filters) -> dict:
    """The dashboard's data, computed in a thread that asks the reader on this loop."""
    reader, loop = request.app[DASHBOARD_READER], asyncio.get_running_loop()

    def query(sql: str) -> str:
        future = asyncio.run_coroutine_threadsafe(reader.query(sql, "JSONEachRow"), loop)
        return future.result(QUERY_TIMEOUT_S)

    window = Window.last_days(days, dt.datetime.now(dt.UTC))
    async with request.app[SLOTS]:
        return await asyncio.to_thread(dashboard_data, query, window, group, filters)


async def page(request: web.Request) -> web.Response:
    if not request.app[AUTH].allowed(request):
        return html(login_page(), 401)
    try:
        days, group, filters = parse(request)
    except ValueError as exc:
        return html(f"<p>Bad request: {escape(str(exc))}</p>", 400)
    try:
        data = await numbers(request, days, group, filters)
    except StoreError as exc:
        log.warning("dashboard query failed: %r", str(exc)[:300])  # %r: no forged log lines
        return html("<p>The store did not answer; try again in a moment.</p>", 503)
    return html(dashboard_page(data, days))


async def data_json(request: web.Request) -> web.Response:
    if not request.app[AUTH].allowed(request):
        return web.json_response({"error": "unauthorized"}, status=401, headers=HEADERS)
    try:
        days, group, filters = parse(request)
        data = await numbers(request, days, group, filters)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400, headers=HEADERS)
    except StoreError as exc:
        return web.json_response({"error": "store", "detail": str(exc)[:500]}, status=503)
    return web.Response(body=orjson.dumps(data), content_type="application/json", headers=HEADERS)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not request.app[AUTH].token_ok(token):
        log.warning("dashboard sign-in refused from %s", request.remote)
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)
        return html(login_page("That is not the dashboard token."), 401)
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


def add_dashboard(app: web.Application, reader: Reader, token: str) -> None:
    """The dashboard routes on `app`, reading through `reader`; without a token, a 404."""
    if not token:
        app.router.add_route("*", "/dashboard", disabled)
        return
    app[AUTH] = Auth(token)
    app[DASHBOARD_READER] = reader
    app[SLOTS] = asyncio.Semaphore(CONCURRENT_PAGES)
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/data.json", data_json)
    app.router.add_post("/dashboard/login", login)
    app.router.add_post("/dashboard/logout", logout)
