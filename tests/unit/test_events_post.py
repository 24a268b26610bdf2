"""POST /e (JSON events, sendBeacon) and its CORS preflight, through a real server."""

from __future__ import annotations

import orjson

from collector.sinks.memory import MemorySink
from tests.support.helpers import metric_value


async def stored(client, sink: MemorySink) -> list[dict]:
    await client.close()  # flushes the buffer into the sink
    return sink.events()


async def post(client, body, content_type="application/json"):  # type: ignore[no-untyped-def]
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post("/e", data=data, headers={"Content-Type": content_type})


async def test_one_event_json(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    event = {"e": "click", "s": "shop", "c": "spring", "p": {"plan": "pro", "qty": 3, "ok": True}}
    resp = await post(client, event)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    [row] = await stored(client, sink)
    assert (row["event_type"], row["site"], row["campaign"]) == ("click", "shop", "spring")
    assert row["props"] == {"plan": "pro", "qty": "3", "ok": "true"}
    assert row["transport"] == "beacon"


async def test_send_beacon_text_plain_array(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    batch = [{"e": "pageview", "s": "blog", "u": f"https://blog.example/{i}"} for i in range(100)]
    resp = await post(client, batch, "text/plain;charset=UTF-8")
    assert resp.status == 204
    rows = await stored(client, sink)
    assert [r["url_path"] for r in rows] == [f"/{i}" for i in range(100)]
    assert len({r["event_id"] for r in rows}) == 100


async def test_bad_bodies_get_400_with_reason_and_store_nothing(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    cases = [
        (b"{not json", "malformed_json"),
        (b"[]", "empty_batch"),
        (orjson.dumps([{"e": "pageview"}] * 101), "too_many_events"),
        (b'"a string"', "event_not_object"),
        (b'{"e": "nope"}', "bad_event_type"),
        (b'{"e": "click", "x": 1}', "unknown_field"),
        (b'{"s": 5}', "s_not_string"),
        (b'{"p": [1]}', "props_not_object"),
        (b'{"p": {"a": {"b": 1}}}', "prop_value_not_scalar"),
        (orjson.dumps({"p": {f"k{i}": "v" for i in range(31)}}), "too_many_props"),
        (orjson.dumps({"p": {"k": "v" * 513}}), "prop_value_too_long"),
        (orjson.dumps([{"e": "click"}, {"e": "bad"}]), "bad_event_type"),
    ]
    for body, reason in cases:
        resp = await post(client, body)
        assert resp.status == 400, (body[:40], resp.status)
        doc = await resp.json()
        assert doc["error"] == reason, (body[:40], doc)
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert await stored(client, sink) == []
    assert metric_value(metrics, "beacon_requests_total", endpoint="events", outcome="400") == len(
        cases
    )


async def test_body_limit_413(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    big = orjson.dumps({"e": "custom", "p": {"k": "v" * 500}}) + b" " * (64 * 1024)
    resp = await post(client, big)
    assert resp.status == 413
    assert (await resp.json())["error"] == "body_too_large"

    async def chunks():  # no Content-Length: the limit must hold while reading too
        for _ in range(80):
            yield b" " * 1024

    resp = await client.post("/e", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert await stored(client, sink) == []


async def test_unsupported_media_type(make_client):
    client = await make_client()
    resp = await client.post(
        "/e", data=b"e=click", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status == 415
    assert (await resp.json())["error"] == "unsupported_media_type"


async def test_preflight(make_client):
    client = await make_client()
    resp = await client.options(
        "/e",
        headers={
            "Origin": "https://site.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in resp.headers["Access-Control-Allow-Headers"]


async def test_dnt_passive_dropped_click_kept_anonymous(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    resp = await client.post(
        "/e",
        data=orjson.dumps([{"e": "pageview", "s": "a"}, {"e": "click", "s": "a"}]),
        headers={"Content-Type": "application/json", "Sec-GPC": "1"},
    )
    assert resp.status == 204
    [row] = await stored(client, sink)
    assert row["event_type"] == "click" and row["visitor_id"] == 0 and row["ip"] == ""


# Two events as the ad tag (collector/static/a.js) sends them, bytes as JSON.stringify writes them.
AD_TAG_BODIES = (
    b'{"e":"impression","u":"https://news.example/a","ad":"banner-3","p":{"imp":"9f3a11c2",'
    b'"kind":"display","measured":"1"},"s":"news","c":"fall"}',
    b'{"e":"viewable","u":"https://news.example/a","ad":"banner-3","p":{"imp":"9f3a11c2",'
    b'"kind":"display","in_view_ms":1016,"max_visible_pct":100},"s":"news","c":"fall"}',
)


async def test_the_ad_tags_impression_and_viewable_events_are_stored(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    for body in AD_TAG_BODIES:
        assert (await post(client, body, "text/plain;charset=UTF-8")).status == 204
    impression, viewable = await stored(client, sink)
    for row in (impression, viewable):
        assert (row["site"], row["campaign"], row["ad"]) == ("news", "fall", "banner-3")
        assert (row["url_host"], row["url_path"]) == ("news.example", "/a")
    assert impression["event_type"] == "impression"
    assert impression["props"] == {"imp": "9f3a11c2", "kind": "display", "measured": "1"}
    assert viewable["event_type"] == "viewable"
    assert viewable["props"] == {
        "imp": "9f3a11c2", "kind": "display", "in_view_ms": "1016", "max_visible_pct": "100"
    }  # fmt: skip


async def test_viewable_is_passive_under_dnt(make_client, metrics):
    """Nobody chose to send it: dropped like the impression it belongs to."""
    sink = MemorySink()
    client = await make_client(sink)
    resp = await client.post(
        "/e", data=AD_TAG_BODIES[1], headers={"Content-Type": "text/plain", "DNT": "1"}
    )
    assert resp.status == 204
    assert await stored(client, sink) == []
    assert metric_value(metrics, "beacon_events_dropped_total", reason="dnt") == 1


async def test_full_buffer_answers_503_and_keeps_none_so_a_retry_makes_no_duplicates(
    make_client, metrics
):
    sink = MemorySink()
    client = await make_client(sink, buffer_max_events=3, linger_ms=60_000)
    assert (await post(client, [{"e": "click", "p": {"n": "0"}}])).status == 204
    batch = [{"e": "click", "p": {"n": str(i)}} for i in (1, 2, 3)]
    resp = await post(client, batch)  # room for two of the three: none is kept
    assert resp.status == 503
    assert (await resp.json()) == {"error": "busy"}
    assert metric_value(metrics, "beacon_events_dropped_total", reason="buffer_full") == 3
    assert (await post(client, batch[:2])).status == 204  # what fits is taken whole
    assert sorted(e["props"]["n"] for e in await stored(client, sink)) == ["0", "1", "2"]
    assert metric_value(metrics, "beacon_events_accepted_total", transport="beacon") == 3
