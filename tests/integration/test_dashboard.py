"""The dashboard routes on a real loopback server over chDB: the token, the session cookie,
read-only answers, every section from stored events, filters by link, and numbers equal to
the report views' and to plain queries."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Iterator
from html import unescape
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from analytics.dashboard import app as dashboard_app
from analytics.dashboard.app import COOKIE, SESSION_S, Auth
from analytics.dashboard.service import create_dashboard_app
from analytics.dashboard.visit_tables import grouped_rows
from analytics.dashboard.web_figures import TABLES, table_keys
from analytics.query_server import create_query_app
from analytics.report_window import Filters, Window
from analytics.rollup_settle import Settler
from analytics.store.readers import LIMIT_SETTINGS, ChdbReader, ReadLimits
from analytics.views import Request, view_rows
from analytics.web import WebConfig, goal_rows, realtime_rows, stored_days, visit_rows
from contract.geo import ATTRIBUTION
from tests.support.chdb_events import Store, wire

TOKEN = "a-long-random-dashboard-token-42"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
GOALS = WebConfig(goals=("signup", "/thanks"))
MINUTE_MS = 60_000
DAY_MS = 86_400_000
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
SECTIONS = (
    "sources", "referrers", "utm_source", "utm_medium", "utm_campaign", "countries", "pages",
    "entry_pages", "exit_pages", "devices", "browsers", "os", "goals", "campaigns", "ads",
)  # fmt: skip
WEB_TILES = ("visitors", "visits", "pageviews", "views_per_visit", "bounce_rate",
             "visit_duration", "realtime")  # fmt: skip


def anchor_ms() -> int:
    """An hour ago, moved back when the visits after it would run past midnight UTC."""
    at = time.time_ns() // 1_000_000 - 3_600_000
    return at - 30 * MINUTE_MS if at % DAY_MS > DAY_MS - 20 * MINUTE_MS else at


def view(at: int, visitor: int, path: str, site: str = "blog", **more: Any) -> dict[str, Any]:
    return wire("pageview", at, site=site, url_host=f"{site}.example", url_path=path,
                visitor_id=visitor, **more)  # fmt: skip


def web_traffic(t: int, now: int) -> list[dict[str, Any]]:
    """Five visits of five people on two sites; one of them a minute ago."""
    de, fr = {"country": "DE"}, {"country": "FR"}
    return [
        # 11: from a search, two pages, 10 s engaged, signs up.
        view(t, 11, "/a", referrer="https://www.google.com/search", **de),
        wire("engagement", t + 1000, site="blog", url_host="blog.example", url_path="/a",
             visitor_id=11, props={"engaged_ms": "4000"}, **de),
        view(t + MINUTE_MS, 11, "/b", referrer="https://blog.example/a", **de),
        wire("engagement", t + MINUTE_MS + 1000, site="blog", url_host="blog.example",
             url_path="/b", visitor_id=11, props={"engaged_ms": "6000"}, **de),
        wire("custom", t + MINUTE_MS + 2000, site="blog", url_host="blog.example",
             url_path="/b", visitor_id=11, props={"event": "signup"}, **de),
        # 22: a newsletter link to /thanks from webmail, 2 s engaged: a bounce.
        view(t + 2 * MINUTE_MS, 22, "/thanks", referrer="https://mail.google.com/",
             url_query="utm_source=newsletter&utm_medium=email&utm_campaign=fall", **fr),
        wire("engagement", t + 2 * MINUTE_MS + 500, site="blog", url_host="blog.example",
             url_path="/thanks", visitor_id=22, props={"engaged_ms": "2000"}, **fr),
        # 44 on a phone, from t.co, two pages ten minutes apart; no country.
        view(t + 3 * MINUTE_MS, 44, "/a", referrer="https://t.co/xyz", user_agent=IPHONE),
        view(t + 13 * MINUTE_MS, 44, "/c", referrer="https://blog.example/a",
             user_agent=IPHONE),
        # 88 on the shop, from Germany, direct.
        view(t + 4 * MINUTE_MS, 88, "/", site="shop", **de),
        # 77, a minute ago: the realtime visitor.
        view(now - MINUTE_MS, 77, "/a", country="US"),
    ]  # fmt: skip


def hostile(t: int) -> list[dict[str, Any]]:
    """Names that are markup, days before the others (outside a day's figures)."""
    markup = "<img src=x onerror=alert(1)>"
    return [
        view(t, 5, "/" + markup, site="<b>site</b>", referrer=f"https://x.example/{markup}",
             url_query="utm_source=%3Cscript%3Ex%3C%2Fscript%3E"),
        wire("custom", t + 1, site="<b>site</b>", url_host="x", url_path="/", visitor_id=5,
             props={"event": "<script>y</script>"}),
        wire("open", t, site="s", campaign="<script>x</script>", recipient="r"),
    ]  # fmt: skip


def mail_and_ads(t: int) -> list[dict[str, Any]]:
    mail = {"site": "shop", "campaign": "spring", "message": "m1"}
    ad = {"site": "news", "campaign": "fall-ads"}
    return (
        [wire("send", t, recipient=f"r{i}", **mail) for i in range(10)]
        + [wire("open", t + 1000 + i, recipient=f"r{i}", **mail) for i in range(6)]
        + [wire("open", t + 2000, recipient="r9", user_agent="Mozilla/5.0", **mail)]
        + [wire("click", t + 3000 + i, recipient=f"r{i}", **mail) for i in range(3)]
        + [wire("impression", t + i, ad="banner-1" if i < 30 else "banner-2", **ad)
           for i in range(50)]
        + [wire("click", t + 5000, ad="banner-1", click_id="0193a1b2-c3d4-7e5f-8a9b-00000000000a",
                visitor_id=1, **ad)]
    )  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("dashboard") / "clickhouse")
    t, now = anchor_ms(), time.time_ns() // 1_000_000
    # The same visits a day earlier, for a day whose visits are settled (outside `days=1`).
    earlier = web_traffic(t - DAY_MS, now - DAY_MS)
    s.add(mail_and_ads(t) + web_traffic(t, now) + earlier + hostile(t - 3 * DAY_MS))
    yield s
    s.close()


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient]:
    app = create_dashboard_app(store.reader(), TOKEN, GOALS)
    c = TestClient(TestServer(app, host="127.0.0.1"))
    await c.start_server()
    yield c
    await c.close()


async def page_of(client: TestClient, query: str) -> str:
    r = await client.get(f"/dashboard{query}", headers=BEARER)
    assert r.status == 200, await r.text()
    return await r.text()


async def data_of(client: TestClient, query: str) -> dict[str, Any]:
    r = await client.get(f"/dashboard/data.json{query}", headers=BEARER)
    assert r.status == 200, await r.text()
    return await r.json()


async def counted(client: TestClient, name: str, **labels: str) -> float:
    """The value of counter `name` with `labels` on the app's /metrics."""
    text = await (await client.get("/metrics")).text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}_total\{{{wanted}\}} (\S+)$", text, re.M)
    assert found, (name, labels)
    return float(found.group(1))


def tile(page: str, name: str) -> str:
    found = re.search(f'data-kpi="{name}"[^>]*>.*?<div class="value">(.*?)</div>', page)
    assert found, name
    return found.group(1)


def row_link(page: str, attribute: str, value: str) -> str:
    """The link of the table row whose key `attribute` is `value`."""
    found = re.search(f'<tr class="pick"[^>]* {attribute}="{re.escape(value)}"[^>]*>'
                      '<td[^>]*><a href="([^"]+)"', page)  # fmt: skip
    assert found, (attribute, value)
    return unescape(found.group(1))


def asked(**filters: Any) -> Request:
    return Request("visits", Window.last_days(1), Filters(**filters), web=GOALS)


async def test_without_the_token_there_is_only_the_sign_in_form(client: TestClient) -> None:
    r = await client.get("/dashboard")
    page = await r.text()
    assert r.status == 401 and 'name="token"' in page.replace("name=token", 'name="token"')
    assert "data-kpi" not in page
    assert r.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    # Not from the URL (it would end up in logs), not with a wrong bearer.
    assert (await client.get(f"/dashboard?token={TOKEN}")).status == 401
    bad = await client.get("/dashboard", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
    for path in ("data.json", "realtime.json", "realtime.js"):
        assert (await client.get(f"/dashboard/{path}")).status == 401, path
        assert (await client.get(f"/dashboard/{path}", headers=bad_bearer())).status == 401
    reads = "beacon_dashboard_reads"
    assert await counted(client, reads, endpoint="page", outcome="unauthorized") == 3
    assert await counted(client, reads, endpoint="data", outcome="unauthorized") == 2
    assert await counted(client, reads, endpoint="page", outcome="ok") == 0


def bad_bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}x"}


async def test_every_section_shows_the_stored_events(client: TestClient, store: Store) -> None:
    r = await client.get("/dashboard?days=1", headers=BEARER)
    page = await r.text()
    assert r.status == 200 and page.count("<svg") == 3
    assert await counted(client, "beacon_dashboard_reads", endpoint="page", outcome="ok") == 1
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1]  # styles only
    for name in SECTIONS:
        section = re.search(f'data-table="{name}"><h3>[^<]*</h3>(.*?)</section>', page)
        assert section and "<tbody><tr" in section.group(1), name
    for name in WEB_TILES:
        assert tile(page, name) not in ("", "-"), name
    assert 'data-campaign="spring"' in page and 'data-ad="banner-1"' in page
    assert 'data-site="blog"' in page and 'data-site="shop"' in page  # the site picker
    assert unescape(page).count(ATTRIBUTION) == 1
    assert "No filters" in page
    # Days as the tiles show them, the ratios of them worked out here.
    assert [tile(page, k) for k in ("visitors", "visits", "pageviews", "views_per_visit",
                                    "bounce_rate", "visit_duration", "realtime")] == [
        "5", "5", "7", "1.40", "60.0%", "2m 02s", "1"]  # fmt: skip


async def test_the_figures_are_the_views_figures(client: TestClient, store: Store) -> None:
    data = await data_of(client, "?days=1")
    web = data["web"]
    [total] = visit_rows(store.query, asked(), ())
    assert web["totals"] == {k: total[k] for k in web["totals"]}
    assert web["totals"] == {"visitors": 5, "visits": 5, "pageviews": 7, "views_per_visit": 1.4,
                             "bounce_rate": 0.6, "visit_duration_s": 122.4}  # fmt: skip
    countries = {r["country"]: r["visitors"] for r in web["tables"]["countries"]}
    assert countries == {"DE": 2, "FR": 1, "US": 1, "": 1}
    sources = {r["source"]: r["visits"] for r in web["tables"]["sources"]}
    assert sources == {"search": 1, "email": 1, "social": 1, "direct": 2}
    assert web["tables"]["pages"] == visit_rows(store.query, asked(), ("page", "site"))[:10]
    assert {r["goal"]: r["converted"] for r in web["goals"]} == {"signup": 1, "/thanks": 1}
    assert web["goals"] == goal_rows(store.query, asked(), ())
    assert sum(web["series"]["pageviews"]) == 7 and len(data["labels"]) == 24
    assert web["realtime"] == {"visitors": 1, "pageviews": 1}
    campaigns = view_rows(store.query, Request("campaign", Window.last_days(1)))
    assert data["campaigns"] == sorted(campaigns, key=lambda c: -c["unique_opens"])
    assert data["totals"]["opens"] == 7 and data["totals"]["machine_opens"] == 1
    assert {a["ad"]: a["impressions"] for a in data["ads"]} == {"banner-1": 30, "banner-2": 20}


@pytest.mark.parametrize("source", ["rollup", "raw"])
async def test_one_scan_gives_each_table_the_rows_of_its_own_query(
    store: Store, source: str
) -> None:
    noon = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0).timestamp()
    await Settler(store.writer, clock=lambda: noon, insert_margin_s=-5).settle_due()
    for filters in (Filters(), Filters(site="blog"), Filters(web=(("country", "DE"),)),
                    Filters(web=(("goal", "signup"), ("source", "search")))):  # fmt: skip
        week = Request("visits", Window.last_days(7), filters, source=source, limit=3, web=GOALS)
        if source == "rollup":
            assert len(stored_days(store.query, week)) >= 2  # settled days, and today raw
        key_sets = [(), *(table_keys(name, filters) for name in TABLES if name != "pages")]
        one_scan = grouped_rows(store.query, week, key_sets)
        assert one_scan == [visit_rows(store.query, week, keys) for keys in key_sets]
        assert one_scan[0]
        if filters == Filters():
            assert any(len(rows) == 3 for rows in one_scan)  # cut at the limit


async def test_a_row_filters_the_whole_page(client: TestClient, store: Store) -> None:
    page = await page_of(client, "?days=1")
    href = row_link(page, "data-country", "DE")
    assert href == "?days=1&country=DE"
    filtered = await page_of(client, href)
    assert re.search(r'data-filter="country">Country <b[^>]*>DE</b>', filtered)
    assert "Clear all" in filtered and 'href="?days=1"' in filtered  # clears it
    # The figures follow: two German visitors, one per site, as a plain count says too.
    assert tile(filtered, "visitors") == "2" != tile(page, "visitors")
    germans = store.rows(
        "SELECT uniqExact(visitor_id) AS n, countIf(event_type = 'pageview') AS views "
        "FROM beacon.events WHERE country = 'DE' AND is_bot = 0 AND visitor_id != 0 AND "
        + Window.last_days(1).sql("received_at")
    )
    assert germans == [{"n": 2, "views": 3}]
    [de] = visit_rows(store.query, asked(web=(("country", "DE"),)), ())
    assert (de["visitors"], de["pageviews"]) == (2, 3)
    assert tile(filtered, "pageviews") == "3"
    assert {r["device_type"] for r in (await data_of(client, href))["web"]["tables"]["devices"]
            } == {"desktop"}  # fmt: skip
    # A second filter from a row of the filtered page adds to the first.
    both = row_link(filtered, "data-source", "search")
    assert both == "?days=1&source=search&country=DE"
    two = await page_of(client, both)
    assert tile(two, "visitors") == "1" and two.count('class="chip"') == 2
    # Email figures do not follow web filters, and say so.
    assert "not filtered by Source, Country" in two


async def test_pages_of_all_sites_filter_by_site_and_page(client: TestClient) -> None:
    page = await page_of(client, "?days=1")
    href = row_link(page, "data-page", "/thanks")
    assert href == "?days=1&site=blog&page=%2Fthanks"
    data = await data_of(client, href)
    assert data["web"]["totals"]["visitors"] == 1
    assert [r["goal"] for r in data["web"]["goals"]] == ["/thanks"]


async def test_bad_filters_are_refused_with_a_reason(client: TestClient) -> None:
    for bad, reason in (
        ("days=0", "days"), ("days=x", "days"), ("group=week", "group"),
        ("site=" + "x" * 300, "site"), ("colour=red", "unknown parameter"),
        ("country=Germany", "country"), ("country=DE&country=FR", "twice"),
        ("device_type=phone", "device_type"), ("source=adverts", "source"),
        ("page=thanks", "page"), ("browser=%00", "browser"), ("goal=" + "g" * 300, "goal"),
        ("%FF=1", "unknown parameter"), ("=x", "unknown parameter"), ("country=%FF", "country"),
        ("page=/%0A", "control"), ("os=" + "%C3%A9" * 257, "256"), ("goal=buy", "signup"),
    ):  # fmt: skip
        r = await client.get(f"/dashboard?{bad}", headers=BEARER)
        assert r.status == 400 and reason in await r.text(), bad
        for path in ("data.json", "realtime.json"):
            j = await client.get(f"/dashboard/{path}?{bad}", headers=BEARER)
            assert j.status == 400 and reason in (await j.json())["error"], (path, bad)
    for endpoint in ("page", "data", "realtime"):
        assert await counted(client, "beacon_dashboard_reads", endpoint=endpoint,
                             outcome="bad_request") == 18  # fmt: skip


async def test_the_realtime_tile_refreshes_from_its_own_endpoint(
    client: TestClient, store: Store
) -> None:
    page = await page_of(client, "?days=1&site=blog")
    assert '<script src="/dashboard/realtime.js" defer></script>' in page
    assert page.count("<script") == 1  # no inline script: the CSP would refuse one
    url = unescape(re.search(r'data-realtime-url="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert url == "/dashboard/realtime.json?days=1&site=blog"
    r = await client.get(url, headers=BEARER)
    found = await r.json()
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    assert (found["visitors"], found["pageviews"]) == (1, 1)
    rows = realtime_rows(store.query, Request("realtime", Window.last_days(1),
                                              Filters(site="blog")))  # fmt: skip
    assert rows == [{"site": "blog", "visitors": 1, "pageviews": 1}]
    quiet = await (await client.get(url.replace("blog", "shop"), headers=BEARER)).json()
    assert quiet["visitors"] == 0
    script = await client.get("/dashboard/realtime.js", headers=BEARER)
    assert script.status == 200 and script.content_type == "text/javascript"
    assert "/dashboard/realtime" not in await script.text()  # the URL comes from the page


@contextlib.asynccontextmanager
async def dashboard_over(reader: Any) -> AsyncIterator[TestClient]:
    c = TestClient(TestServer(create_dashboard_app(reader, TOKEN, GOALS), host="127.0.0.1"))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()


async def check_stopped(c: TestClient, reason: str, status: int, paths: tuple[str, ...]) -> None:
    """The page and the JSON `paths` answer a read stopped at a limit with the setting to
    raise, and count it under `reason`, so an operator sees the limit."""
    page = await c.get("/dashboard?days=1", headers=BEARER)
    assert page.status == status
    assert f"{LIMIT_SETTINGS[reason]}): choose fewer days" in await page.text()
    for path in paths:
        r = await c.get(f"/dashboard/{path}", headers=BEARER)
        assert (r.status, (await r.json())["reason"]) == (status, reason), path
    for endpoint in ("page", *(path.split(".")[0] for path in paths)):
        for outcome, times in ((reason, 1), ("ok", 0), ("error", 0)):
            got = await counted(c, "beacon_dashboard_reads", endpoint=endpoint, outcome=outcome)
            assert got == times, (endpoint, outcome)


async def test_realtime_refuses_a_campaign_or_ad_and_the_tile_asks_without_them(
    client: TestClient,
) -> None:
    # Realtime visitors are counted by site: a campaign or ad would leave them as they are.
    for bad, names in (("campaign=spring", "campaign"), ("days=1&ad=banner-1", "ad"),
                       ("site=blog&campaign=spring&ad=banner-1", "campaign, ad")):  # fmt: skip
        r = await client.get(f"/dashboard/realtime.json?{bad}", headers=BEARER)
        assert r.status == 400, bad
        assert (await r.json())["error"].startswith(f"{names} cannot filter the realtime view")
    assert await counted(client, "beacon_dashboard_reads", endpoint="realtime",
                         outcome="bad_request") == 3  # fmt: skip
    # The page takes them (its email and ad half follows them); its tile asks without them.
    page = await page_of(client, "?days=1&site=blog&campaign=spring&ad=banner-1")
    url = unescape(re.search(r'data-realtime-url="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert url == "/dashboard/realtime.json?days=1&site=blog"
    assert (await client.get(url, headers=BEARER)).status == 200


async def test_a_read_over_its_memory_limit_says_so_and_asks_for_fewer_days(
    store: Store,
) -> None:
    limits = ReadLimits(timeout_s=30, max_result_bytes=1 << 20, max_memory_bytes=64 * 1024)
    reader = ChdbReader(store.writer.path, limits)
    try:
        async with dashboard_over(reader) as c:
            await check_stopped(c, "memory_limit", 413, ("data.json?days=1", "realtime.json"))
    finally:
        await reader.close()


class Silent:
    """A reader that never answers: the page's own wait is what is tested, not the store."""

    limits = ReadLimits(timeout_s=1, max_result_bytes=1 << 20)

    def __init__(self) -> None:
        self.cancelled: asyncio.Queue[str] = asyncio.Queue()  # each read stopped, by its SQL

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.put_nowait(sql)
            raise
        return ""

    async def close(self) -> None:
        pass


async def test_a_read_that_never_answers_is_given_up_as_a_timeout_and_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the read's own time limit and the margin, the page answers 504 (never a 500) and
    cancels the read, which a reader turns into KILL QUERY or a hang-up."""
    monkeypatch.setattr(dashboard_app, "QUERY_WAIT_MARGIN_S", 0.5)
    reader = Silent()
    async with dashboard_over(reader) as c:
        await check_stopped(c, "timeout", 504, ("data.json?days=1",))
    for _ in range(2):  # the page's read and the data's, each stopped
        assert "SELECT" in await asyncio.wait_for(reader.cancelled.get(), 30)


class Broken:
    """A reader with a fault of its own (not a store's refusal): the counting is tested."""

    limits = ReadLimits(timeout_s=1, max_result_bytes=1 << 20)

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        raise RuntimeError("a fault of the reader")

    async def close(self) -> None:
        pass


async def test_a_fault_of_the_code_is_a_500_counted_as_error() -> None:
    async with dashboard_over(Broken()) as c:
        for path, endpoint in (
            ("", "page"),
            ("/data.json", "data"),
            ("/realtime.json", "realtime"),
        ):
            r = await c.get(f"/dashboard{path}?days=1", headers=BEARER)
            assert r.status == 500, path
            for outcome, times in (("error", 1), ("client_gone", 0), ("unavailable", 0)):
                got = await counted(c, "beacon_dashboard_reads", endpoint=endpoint, outcome=outcome)
                assert got == times, (endpoint, outcome)


async def test_signing_in_sets_a_session_cookie_that_is_not_the_token(client: TestClient):
    refused = await client.post("/dashboard/login", data={"token": "guess"})
    assert refused.status == 401 and "not the dashboard token" in await refused.text()
    r = await client.post("/dashboard/login", data={"token": TOKEN}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/dashboard"
    too_large = await client.post("/dashboard/login", data={"token": "x" * 100_000})
    assert too_large.status == 413
    for outcome in ("refused", "signed_in", "bad_request"):
        assert await counted(client, "beacon_dashboard_sign_ins", outcome=outcome) == 1
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    value = re.search(f"{COOKIE}=([^;]+)", cookie)
    assert value and TOKEN not in value.group(1)
    assert (await client.get("/dashboard?days=1")).status == 200  # the client keeps the cookie
    assert (await client.get("/dashboard/realtime.json")).status == 200
    out = await client.post("/dashboard/logout", allow_redirects=False)
    assert out.status == 303
    assert (await client.get("/dashboard")).status == 401


def test_sessions_expire_and_cannot_be_forged() -> None:
    now = [1_000_000.0]
    auth = Auth(TOKEN, clock=lambda: now[0])
    session = auth.new_session()
    assert auth.session_ok(session)
    expires, mac = session.split(".")
    assert not auth.session_ok(f"{int(expires) + 3600}.{mac}")  # a later expiry, same MAC
    assert not Auth("another-token-entirely-000").session_ok(session)
    now[0] += SESSION_S + 1
    assert not auth.session_ok(session)
    assert not auth.session_ok("") and not auth.session_ok("x.y")


async def test_the_store_port_serves_it_only_with_a_token(store: Store) -> None:
    for token, status in (("", 404), (TOKEN, 401)):
        app = create_query_app(
            store.writer, store.reader(), CollectorRegistry(), dashboard_token=token
        )
        c = TestClient(TestServer(app, host="127.0.0.1"))
        await c.start_server()
        try:
            assert (await c.get("/dashboard")).status == status
            metrics = await (await c.get("/metrics")).text()  # the store port's /metrics
            unauthorized = 'beacon_dashboard_reads_total{endpoint="page",outcome="unauthorized"}'
            assert (f"{unauthorized} 1.0" in metrics) == bool(token), metrics
            sql = orjson.dumps({"sql": "SELECT 1"})
            headers = {"Content-Type": "application/json"}
            assert (await c.post("/query", data=sql, headers=headers)).status == 200
        finally:
            await c.close()


async def test_stored_names_are_text_not_markup(client: TestClient) -> None:
    page = await page_of(client, "?days=7")
    href = row_link(page, "data-utm-source", "&lt;script&gt;x&lt;/script&gt;")
    filtered = await page_of(client, href)
    for html in (page, filtered):
        assert html.count("<script") == 1 and "<img" not in html and "<b>" not in html
        assert "&lt;script&gt;" in html and "&lt;img" in html
