"""GET/HEAD /p.gif through a real server on loopback."""

from __future__ import annotations

from collector.pixel import GIF_BYTES
from collector.sinks.memory import MemorySink
from tests.support.helpers import clear_of_midnight, metric_value

UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"


async def stored(client, sink: MemorySink) -> list[dict]:
    """Stop the server (which flushes the buffer into the sink) and return what it holds."""
    await client.close()
    return sink.events()


async def test_pixel_bytes_and_headers(make_client):
    client = await make_client()
    resp = await client.get("/p.gif")
    assert resp.status == 200
    assert len(await resp.read()) == 43  # what the bytes are: tests/integration/test_pixel_image.py
    assert resp.headers["Content-Type"] == "image/gif"
    assert resp.headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0"
    assert resp.headers["Pragma"] == "no-cache"
    assert resp.headers["Expires"] == "0"
    assert resp.headers["Content-Length"] == "43"


async def test_pixel_event_fields(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    query = {
        "e": "open", "s": "shop", "c": "spring", "m": "msg-1", "r": "rcpt-9", "ad": "ad-3",
        "u": "https://Shop.Example/a/b?utm_source=mail&email=x@y.z#top",
        "ref": "https://mail.example/inbox?session=secret", "p.color": "red", "p.n": "2",
        "junk": "ignored",
    }  # fmt: skip
    resp = await client.get("/p.gif", params=query, headers={"User-Agent": UA})
    assert resp.status == 200
    [event] = await stored(client, sink)
    assert event["schema_version"] == 2
    assert event["event_type"] == "open"
    assert (event["site"], event["campaign"], event["message"]) == ("shop", "spring", "msg-1")
    assert (event["recipient"], event["ad"]) == ("rcpt-9", "ad-3")
    assert event["url_host"] == "shop.example"
    assert event["url_path"] == "/a/b"
    assert event["url_query"] == "utm_source=mail"  # the e-mail address is not kept
    assert event["referrer"] == "https://mail.example/inbox"
    assert event["props"] == {"color": "red", "n": "2"}
    assert event["user_agent"] == UA
    assert event["ip"] == "127.0.0.0"
    assert event["visitor_id"] > 0
    assert event["transport"] == "pixel"
    assert event["event_id"][14] == "7"  # UUIDv7
    assert "junk" not in event


async def test_defaults_pageview_and_referer_as_page(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    await client.get("/p.gif?s=blog", headers={"Referer": "https://blog.example/post/1"})
    [event] = await stored(client, sink)
    assert event["event_type"] == "pageview"
    assert (event["url_host"], event["url_path"]) == ("blog.example", "/post/1")


async def test_head_serves_the_pixel_and_records_nothing(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    head = await client.head("/p.gif?e=open&s=a", headers={"Sec-Purpose": "prefetch"})
    assert head.status == 200 and head.headers["Content-Type"] == "image/gif"
    assert await stored(client, sink) == []
    assert metric_value(metrics, "beacon_requests_total", endpoint="pixel", outcome="head") == 1
    assert metric_value(metrics, "beacon_events_flagged_total", flag="prefetch") == 0


# Speculative requests as browsers send them, and the `purpose` each is recorded with.
SPECULATIVE = [
    ({"Sec-Purpose": "prefetch"}, "prefetch"),  # Chromium's prefetch
    ({"Sec-Purpose": "prefetch;prerender"}, "prerender"),  # Chromium's prerender
    ({"Purpose": "prefetch"}, "prefetch"),  # older Chromium
    ({"Purpose": "Prefetch"}, "prefetch"),
    ({"X-Moz": "prefetch"}, "prefetch"),  # Firefox
    ({"X-Purpose": "preview"}, "preview"),  # Safari's previews
    ({"Purpose": "preview"}, "preview"),
    ({"X-Purpose": "preview", "Sec-Purpose": "prefetch"}, "prefetch"),
    ({"Sec-Purpose": "anything else"}, ""),
    ({"X-Moz": "preview"}, ""),
    ({}, ""),
]


async def test_speculative_pixels_are_recorded_with_their_purpose(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    for i, (headers, _) in enumerate(SPECULATIVE):
        resp = await client.get(f"/p.gif?e=open&s=a&r={i}", headers=headers)
        assert resp.status == 200 and await resp.read() == GIF_BYTES
    events = sorted(await stored(client, sink), key=lambda e: int(e["recipient"]))
    assert [e.get("purpose", "") for e in events] == [p for _, p in SPECULATIVE]
    assert all("purpose" not in e for e in events if not SPECULATIVE[int(e["recipient"])][1])
    requests = metric_value(metrics, "beacon_requests_total", endpoint="pixel", outcome="recorded")
    assert requests == len(SPECULATIVE)
    flagged = {
        flag: metric_value(metrics, "beacon_events_flagged_total", flag=flag)
        for flag in ("prefetch", "prerender", "preview", "data_center", "crawler")
    }
    assert flagged == {"prefetch": 5, "prerender": 1, "preview": 2, "data_center": 0, "crawler": 0}


async def test_junk_event_type_is_counted_not_stored(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    resp = await client.get("/p.gif?e=hack&s=a")
    assert resp.status == 200 and await resp.read() == GIF_BYTES
    long_id = await client.get("/p.gif", params={"s": "x" * 300})
    assert long_id.status == 200
    assert await stored(client, sink) == []
    assert metric_value(metrics, "beacon_events_dropped_total", reason="bad_event_type") == 1
    assert metric_value(metrics, "beacon_events_dropped_total", reason="site_too_long") == 1


async def test_property_limits(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    params = {f"p.k{i}": str(i) for i in range(35)}
    params["p." + "k" * 65] = "long key"
    params["p.big"] = "v" * 513
    params["p.edge"] = "v" * 512
    resp = await client.get("/p.gif", params=params)
    assert resp.status == 200
    [event] = await stored(client, sink)
    assert len(event["props"]) == 30
    assert "big" not in event["props"] and "k" * 65 not in event["props"]
    assert metric_value(metrics, "beacon_input_fixed_total", reason="too_many_props") == 6
    assert metric_value(metrics, "beacon_input_fixed_total", reason="prop_key_invalid") == 1
    assert metric_value(metrics, "beacon_input_fixed_total", reason="prop_value_too_long") == 1


async def test_long_url_is_truncated_and_counted(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    url = "https://a.example/" + "x" * 3000
    await client.get("/p.gif", params={"u": url})
    [event] = await stored(client, sink)
    assert event["url_path"] == "/" + "x" * (2000 - len("https://a.example/"))
    assert metric_value(metrics, "beacon_input_fixed_total", reason="url_truncated") == 1


async def test_bad_percent_escapes_and_utf8_still_get_the_pixel(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    for raw in ("/p.gif?s=%ZZ&c=%", "/p.gif?s=%ff%fe&u=%C3%28", "/p.gif?=&&&p.=1&p.%00=x"):
        resp = await client.get(raw)
        assert resp.status == 200, raw
        assert await resp.read() == GIF_BYTES
    assert len(await stored(client, sink)) == 3


async def test_dnt_and_gpc_default_policy(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    for header in ({"DNT": "1"}, {"Sec-GPC": "1"}):
        for kind in ("pageview", "open", "impression"):
            await client.get(f"/p.gif?e={kind}&s=a", headers=header)
        await client.get("/p.gif?e=click&s=a", headers=header)
        await client.get("/p.gif?e=conversion&s=a", headers=header)
    events = await stored(client, sink)
    assert sorted(e["event_type"] for e in events) == ["click", "click", "conversion", "conversion"]
    assert all(e["visitor_id"] == 0 and e["ip"] == "" and e["dnt"] == 1 for e in events)
    assert metric_value(metrics, "beacon_events_dropped_total", reason="dnt") == 6


async def test_dnt_policy_ignore_and_all(make_client):
    sink = MemorySink()
    client = await make_client(sink, dnt_policy="ignore")
    await client.get("/p.gif?e=open&s=a", headers={"DNT": "1"})
    [event] = await stored(client, sink)
    assert event["visitor_id"] > 0 and event["dnt"] == 1

    sink = MemorySink()
    client = await make_client(sink, dnt_policy="all")
    await client.get("/p.gif?e=click&s=a", headers={"Sec-GPC": "1"})
    assert await stored(client, sink) == []


async def test_ip_modes_and_trusted_forwarded_header(make_client):
    cases = [
        ("truncate", "203.0.113.77", "203.0.113.0"),
        ("truncate", "2001:db8:abcd:1234::1", "2001:db8:abcd::"),
        ("truncate", "::ffff:198.51.100.9", "198.51.100.0"),
        ("full", "203.0.113.77", "203.0.113.77"),
        ("drop", "203.0.113.77", ""),
    ]
    for mode, client_ip, expected in cases:
        sink = MemorySink()
        client = await make_client(sink, ip_mode=mode, forwarded_header="X-Forwarded-For")
        await client.get("/p.gif?s=a", headers={"X-Forwarded-For": f"10.9.9.9, {client_ip}"})
        [event] = await stored(client, sink)
        assert event["ip"] == expected, (mode, client_ip)


async def test_forwarded_header_ignored_unless_configured(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    await client.get("/p.gif?s=a", headers={"X-Forwarded-For": "203.0.113.77"})
    [event] = await stored(client, sink)
    assert event["ip"] == "127.0.0.0"  # the socket peer, not the client's claim


async def test_visitor_id_uses_full_ip_before_truncation(make_client):
    sink = MemorySink()
    client = await make_client(sink, forwarded_header="X-Real-IP")
    await clear_of_midnight(10)  # the three requests in one UTC day: the first and third alike
    for ip in ("203.0.113.1", "203.0.113.2", "203.0.113.1"):
        await client.get("/p.gif?s=a", headers={"X-Real-IP": ip, "User-Agent": UA})
    a, b, c = await stored(client, sink)
    assert a["ip"] == b["ip"] == "203.0.113.0"
    assert a["visitor_id"] != b["visitor_id"]
    assert a["visitor_id"] == c["visitor_id"]


async def test_health_ready_robots_metrics(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    sink.is_healthy = False
    ready = await client.get("/readyz")
    assert ready.status == 503 and "sink" in await ready.text()
    robots = await client.get("/robots.txt")
    assert await robots.text() == "User-agent: *\nDisallow: /\n"
    await client.get("/p.gif?s=a")
    text = await (await client.get("/metrics")).text()
    assert 'beacon_requests_total{endpoint="pixel",outcome="recorded"} 1.0' in text
    assert 'beacon_hot_path_seconds_bucket{endpoint="pixel",le="5e-06"}' in text
    assert "beacon_buffer_events" in text


async def test_buffer_full_drops_are_counted(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, buffer_max_events=2, linger_ms=60_000)
    for _ in range(5):
        assert (await client.get("/p.gif?s=a")).status == 200
    assert len(await stored(client, sink)) == 2
    assert metric_value(metrics, "beacon_events_dropped_total", reason="buffer_full") == 3


async def test_unknown_paths_and_methods_are_answered_as_before_and_counted(make_client, metrics):
    client = await make_client()
    missing = await client.get("/wp-login.php")
    assert missing.status == 404 and await missing.text() == "404: Not Found"
    wrong = await client.post("/p.gif")
    assert wrong.status == 405 and set(wrong.headers["Allow"].split(",")) == {"GET", "HEAD"}
    assert (await client.delete("/e")).status == 405
    assert (await client.get("/p.gif")).status == 200  # the routes before it still answer
    unrouted = {"name": "beacon_requests_total", "endpoint": "unrouted"}
    assert metric_value(metrics, **unrouted, outcome="404") == 1
    assert metric_value(metrics, **unrouted, outcome="405") == 2


async def test_a_client_cannot_set_network_or_purpose_itself(make_client):
    """They come from the address and the request's headers alone: as parameters they are
    junk (a pixel ignores them) or an unknown field (POST /e refuses the event)."""
    sink = MemorySink()
    client = await make_client(sink)
    await client.get("/p.gif?s=a&network=data_center&purpose=prefetch")
    refused = await client.post("/e", json={"s": "a", "purpose": "prefetch"})
    assert refused.status == 400 and (await refused.json())["error"] == "unknown_field"
    [event] = await stored(client, sink)
    assert "network" not in event and "purpose" not in event
