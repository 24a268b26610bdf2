"""The dashboard routes on a real loopback server over chDB: the token, the session cookie,
read-only answers, and numbers equal to the report views'."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from analytics.dashboard.app import COOKIE, SESSION_S, Auth
from analytics.dashboard.service import create_dashboard_app
from analytics.query_server import create_query_app
from analytics.report_window import Window
from analytics.views import Request, view_rows
from tests.support.chdb_events import Store, hour_ago_ms, wire

TOKEN = "a-long-random-dashboard-token-42"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("dashboard") / "clickhouse")
    t = hour_ago_ms()
    mail = {"site": "shop", "campaign": "spring", "message": "m1"}
    s.add(
        [wire("send", t, recipient=f"r{i}", **mail) for i in range(10)]
        + [wire("open", t + 1000 + i, recipient=f"r{i}", **mail) for i in range(6)]
        + [wire("open", t + 2000, recipient="r9", user_agent="Mozilla/5.0", **mail)]
        + [wire("click", t + 3000 + i, recipient=f"r{i}", **mail) for i in range(3)]
        + [wire("pageview", t + 4000 + i, site="blog", url_host="blog.example",
                url_path=f"/p{i % 2}", visitor_id=7 + i % 3) for i in range(5)]
    )  # fmt: skip
    yield s
    s.close()


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient]:
    c = TestClient(TestServer(create_dashboard_app(store.reader(), TOKEN), host="127.0.0.1"))
    await c.start_server()
    yield c
    await c.close()


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
    assert (await client.get("/dashboard/data.json")).status == 401


async def test_a_bearer_token_opens_the_page_and_the_data(client: TestClient, store: Store):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = await client.get("/dashboard?days=1", headers=headers)
    page = await r.text()
    assert r.status == 200 and page.count("<svg") == 2
    assert 'data-campaign="spring"' in page
    data = await (await client.get("/dashboard/data.json?days=1", headers=headers)).json()
    campaigns = view_rows(store.query, Request("campaign", Window.last_days(1)))
    assert data["campaigns"] == campaigns
    assert data["totals"]["opens"] == 7 and data["totals"]["machine_opens"] == 1
    assert data["totals"]["pageviews"] == 5 and data["totals"]["unique_visitors"] == 3
    assert len(data["labels"]) == 24 and sum(data["series"]["machine_opens"]) == 1
    for bad in ("days=0", "days=x", "group=week", "site=" + "x" * 300):
        assert (await client.get(f"/dashboard?{bad}", headers=headers)).status == 400


async def test_signing_in_sets_a_session_cookie_that_is_not_the_token(client: TestClient):
    refused = await client.post("/dashboard/login", data={"token": "guess"})
    assert refused.status == 401 and "not the dashboard token" in await refused.text()
    r = await client.post("/dashboard/login", data={"token": TOKEN}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/dashboard"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    value = re.search(f"{COOKIE}=([^;]+)", cookie)
    assert value and TOKEN not in value.group(1)
    assert (await client.get("/dashboard?days=1")).status == 200  # the client keeps the cookie
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
            sql = orjson.dumps({"sql": "SELECT 1"})
            headers = {"Content-Type": "application/json"}
            assert (await c.post("/query", data=sql, headers=headers)).status == 200
        finally:
            await c.close()


def test_the_dashboard_page_is_not_a_script_host(tmp_path: Path) -> None:
    from analytics.dashboard.page import dashboard_page, login_page

    data = {
        "window": {"start": "s", "end": "e", "group": "hour"},
        "labels": ["2026-01-01 00:00"],
        "series": {k: [1] for k in ("human_opens", "machine_opens", "human_clicks",
                                    "conversions")},
        "totals": {"opens": 1, "machine_opens": 0, "clicks": 1, "human_clicks": 1,
                   "conversions": 0, "revenue": {}, "pageviews": 1, "unique_visitors": 1},
        "campaigns": [{"campaign": "<script>x</script>", "sent": 1}],
        "pages": [{"url_path": "/<img src=x onerror=y>", "pageviews": 1}],
        "referrers": [],
    }  # fmt: skip
    html = dashboard_page(data, 1) + login_page("<b>")
    assert "<script" not in html and "<img" not in html and "<b>" not in html
