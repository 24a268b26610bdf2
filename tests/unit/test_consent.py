"""Consent modes and the visitor cookie, through a real collector on loopback."""

from __future__ import annotations

import orjson
import pytest

from collector.consent import MS_PER_HOUR, ConsentPolicy
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from contract.config import SettingsError
from tests.support.helpers import metric_value

UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"
PAGE = "https://shop.example/cart?utm_source=mail&gclid=abc&email=a@b.c"


async def stored(client, sink: MemorySink) -> list[dict]:
    await client.close()  # flushes the buffer into the sink
    return sink.events()


async def post(client, events, **headers: str):  # type: ignore[no-untyped-def]
    return await client.post(
        "/e", data=orjson.dumps(events), headers={"Content-Type": "text/plain", **headers}
    )


def test_policy_decisions() -> None:
    notes: list[str] = []
    shop_drop = ConsentPolicy(("shop",), "drop")
    assert shop_drop.basis("", "blog", notes) == "not_required"
    assert shop_drop.basis("1", "blog", notes) == "granted"
    assert shop_drop.basis("0", "blog", notes) == "drop"  # a refusal counts everywhere
    assert shop_drop.basis("", "shop", notes) == "drop"
    assert shop_drop.basis("granted", "shop", notes) == "granted"
    assert ConsentPolicy(("*",), "aggregate").basis("", "any", notes) == "missing"
    assert ConsentPolicy((), "aggregate").basis("no", "any", notes) == "missing"
    assert notes == []
    assert shop_drop.basis("maybe", "shop", notes) == "drop"
    assert notes == ["bad_consent"]


async def test_consent_not_required_by_default(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    await client.get("/p.gif", params={"s": "blog", "u": PAGE}, headers={"User-Agent": UA})
    [row] = await stored(client, sink)
    assert row["consent"] == "not_required" and row["visitor_id"] > 0


async def test_a_refused_post_counts_the_events_it_would_have_dropped(make_client, metrics):
    # Refused whole (503, no room): the kept events count as buffer_full, the others as why
    # they would not have been kept, so every event of the attempt has its reason.
    client = await make_client(
        MemorySink(), consent_required=("shop",), buffer_max_events=1, linger_ms=60_000
    )
    batch = [{"e": "click", "s": "shop"}, {"e": "click", "s": "shop", "consent": True}] * 2
    assert (await post(client, batch)).status == 503
    assert metric_value(metrics, "beacon_events_dropped_total", reason="no_consent") == 2
    assert metric_value(metrics, "beacon_events_dropped_total", reason="buffer_full") == 2


async def test_required_without_consent_drops_and_counts(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, consent_required=("shop",))
    for consent in ("", "0", "maybe"):
        resp = await client.get("/p.gif", params={"s": "shop", "r": "u-1", "consent": consent})
        assert resp.status == 200
    await client.get("/p.gif", params={"s": "shop", "r": "u-1", "consent": "1"})
    await client.get("/p.gif", params={"s": "blog", "r": "u-1"})  # another site: not required
    resp = await post(
        client, [{"e": "click", "s": "shop"}, {"e": "click", "s": "shop", "consent": True}]
    )
    assert resp.status == 204
    rows = await stored(client, sink)
    assert [(r["site"], r["event_type"], r["consent"]) for r in rows] == [
        ("shop", "pageview", "granted"),
        ("blog", "pageview", "not_required"),
        ("shop", "click", "granted"),
    ]
    assert metric_value(metrics, "beacon_events_dropped_total", reason="no_consent") == 4
    assert metric_value(metrics, "beacon_requests_total", endpoint="pixel", outcome="no_consent")


async def test_aggregate_mode_keeps_a_count_without_identifiers(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, consent_required=("*",), consent_missing="aggregate")
    query = {
        "e": "conversion", "s": "shop", "c": "spring", "ad": "a1", "m": "m-1", "r": "u-77",
        "u": PAGE, "ref": "https://mail.example/inbox/42?x=1", "p.plan": "pro",
        "v": "9.5", "cur": "EUR", "o": "order-1",
    }  # fmt: skip
    await client.get("/p.gif", params=query, headers={"User-Agent": UA})
    await client.get("/p.gif", params={**query, "consent": "1"}, headers={"User-Agent": UA})
    anonymous, consented = await stored(client, sink)
    assert anonymous["consent"] == "missing"
    assert (anonymous["site"], anonymous["campaign"], anonymous["ad"]) == ("shop", "spring", "a1")
    assert (anonymous["url_host"], anonymous["url_path"]) == ("shop.example", "/cart")
    assert anonymous["url_query"] == "utm_source=mail"
    assert anonymous["referrer"] == "https://mail.example"
    assert (anonymous["value"], anonymous["currency"]) == ("9.5", "EUR")
    for name in ("message", "recipient", "user_agent", "ip"):
        assert anonymous[name] == "", name
    assert anonymous["visitor_id"] == 0 and anonymous["props"] == {}
    assert "order_id" not in anonymous
    assert anonymous["received_at"] % MS_PER_HOUR == 0
    assert consented["consent"] == "granted"
    assert consented["recipient"] == "u-77" and consented["order_id"] == "order-1"
    assert consented["visitor_id"] > 0 and consented["user_agent"] == UA


async def test_cookie_mode_sets_one_cookie_for_consented_events(make_client, metrics):
    sink = MemorySink()
    client = await make_client(
        sink, visitor_cookie=True, cookie_domain="example.com", cookie_max_age_s=3600
    )
    first = await client.get("/p.gif", params={"s": "shop", "consent": "1"})
    cookie = first.headers["Set-Cookie"]
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    name, _, value = name_value.partition("=")
    assert name == "beacon_vid" and value.isdigit()
    assert set(attributes) == {
        "Max-Age=3600", "Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Domain=example.com"
    }  # fmt: skip
    assert first.headers["Cache-Control"].startswith("no-store")  # never cached with a cookie
    again = await client.get(
        "/p.gif", params={"s": "shop", "consent": "1"}, headers={"Cookie": f"beacon_vid={value}"}
    )
    assert "Set-Cookie" not in again.headers  # not renewed: it expires when it was set to
    batch = await post(client, [{"s": "shop", "consent": "1"}] * 3)
    assert batch.status == 204 and "Set-Cookie" in batch.headers
    batch_id = int(batch.headers["Set-Cookie"].split(";")[0].split("=")[1])
    plain = await client.get("/p.gif", params={"s": "shop"})  # no consent: no cookie
    assert "Set-Cookie" not in plain.headers
    forged = await client.get(
        "/p.gif", params={"s": "shop", "consent": "1"}, headers={"Cookie": "beacon_vid=x1"}
    )
    assert "Set-Cookie" in forged.headers
    rows = await stored(client, sink)
    ids = [row["visitor_id"] for row in rows]
    assert ids[0] == ids[1] == int(value)
    assert ids[2] == ids[3] == ids[4] == batch_id != int(value)
    assert ids[5] not in (0, int(value), batch_id)  # the daily hash
    assert metric_value(metrics, "beacon_input_fixed_total", reason="bad_visitor_cookie") == 1


async def test_no_cookie_for_a_pixel_event_that_is_not_stored(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, visitor_cookie=True)
    refused = await client.get("/p.gif", params={"s": "shop", "consent": "1", "e": "no-such"})
    assert refused.status == 200 and "Set-Cookie" not in refused.headers
    assert metric_value(metrics, "beacon_events_dropped_total", reason="bad_event_type") == 1
    kept = await client.get("/p.gif", params={"s": "shop", "consent": "1"})
    assert "Set-Cookie" in kept.headers  # the same request, stored: its cookie
    assert len(await stored(client, sink)) == 1


async def test_no_cookie_for_posted_events_that_are_not_stored(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, visitor_cookie=True, buffer_max_events=1, linger_ms=60_000)
    # A batch is kept whole or not at all: the consented event, which would carry the new
    # id, does not fit, so neither is stored and no cookie names it.
    mixed = await post(client, [{"s": "shop"}, {"s": "shop", "consent": "1"}])
    assert mixed.status == 503 and "Set-Cookie" not in mixed.headers
    first = await post(client, [{"s": "shop"}])  # stored, without a new id
    assert first.status == 204 and "Set-Cookie" not in first.headers
    busy = await post(client, [{"s": "shop", "consent": "1"}])  # nothing stored at all
    assert busy.status == 503 and "Set-Cookie" not in busy.headers
    [row] = await stored(client, sink)
    assert row["consent"] == "not_required"
    assert metric_value(metrics, "beacon_events_dropped_total", reason="buffer_full") == 3


async def test_a_cookie_for_posted_events_of_which_one_carrying_it_is_stored(make_client):
    sink = MemorySink()
    client = await make_client(sink, visitor_cookie=True, buffer_max_events=2, linger_ms=60_000)
    batch = await post(client, [{"s": "shop"}, {"s": "shop", "consent": "1"}])
    assert batch.status == 204
    cookie_id = int(batch.headers["Set-Cookie"].split(";")[0].split("=")[1])
    rows = await stored(client, sink)
    assert [row["visitor_id"] == cookie_id for row in rows] == [False, True]


async def test_json_consent_must_be_a_string_or_a_boolean(make_client):
    client = await make_client()
    resp = await post(client, {"e": "click", "consent": 1})
    assert resp.status == 400
    assert (await resp.json())["error"] == "consent_not_string"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"cookie_name": "a b"}, "BEACON_COOKIE_NAME"),
        ({"cookie_domain": "example.com; Secure"}, "BEACON_COOKIE_DOMAIN"),
        ({"cookie_domain": "exa\r\nmple.com"}, "BEACON_COOKIE_DOMAIN"),
    ],
)
def test_cookie_settings_cannot_inject_into_the_header(overrides, variable) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings(**overrides)


def test_consent_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "BEACON_CONSENT_REQUIRED": "shop, blog",
            "BEACON_CONSENT_MISSING": "aggregate",
            "BEACON_VISITOR_COOKIE": "true",
            "BEACON_COOKIE_SAME_SITE": "Strict",
        }
    )
    assert settings.consent_required == ("shop", "blog")
    assert settings.consent_missing == "aggregate" and settings.visitor_cookie
    with pytest.raises(SettingsError, match="BEACON_CONSENT_MISSING"):
        Settings.from_env({"BEACON_CONSENT_MISSING": "keep"})


async def test_engagement_is_passive_for_dnt_and_gpc(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    events = [{"e": "engagement", "s": "blog", "p": {"scroll_pct": 80, "engaged_ms": 1200}}]
    assert (await post(client, events, **{"Sec-GPC": "1"})).status == 204
    assert (await post(client, events)).status == 204
    [row] = await stored(client, sink)
    assert row["event_type"] == "engagement"
    assert row["props"] == {"scroll_pct": "80", "engaged_ms": "1200"}
    assert metric_value(metrics, "beacon_events_dropped_total", reason="dnt") == 1
