"""The optional per-IP rate limit (collector/ratelimit.py), through a real server on loopback."""

from __future__ import annotations

from dataclasses import replace

from collector.pixel import GIF_BYTES
from collector.ratelimit import MAX_CLIENTS, TokenBuckets, rate_limit_buckets
from collector.sinks.memory import MemorySink
from tests.support.helpers import metric_value


async def test_off_by_default_adds_no_middleware(make_client):
    client = await make_client()
    assert list(client.server.app.middlewares) == []
    for _ in range(50):
        assert (await client.get("/p.gif?e=open&s=a")).status == 200
    limited = await make_client(rate_limit_per_s=1.0)
    assert len(limited.server.app.middlewares) == 1


async def test_pixels_over_the_limit_get_the_gif_but_are_not_recorded(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, rate_limit_per_s=0.01, rate_limit_burst=3)
    for i in range(5):
        resp = await client.get(f"/p.gif?e=open&s=a&r=r{i}")
        assert resp.status == 200
        assert await resp.read() == GIF_BYTES
        assert resp.headers["Content-Type"] == "image/gif"
    await client.close()
    assert [e["recipient"] for e in sink.events()] == ["r0", "r1", "r2"]
    assert metric_value(metrics, "beacon_rate_limited_total", endpoint="pixel") == 2
    assert (
        metric_value(metrics, "beacon_requests_total", endpoint="pixel", outcome="rate_limited")
        == 2
    )


async def test_events_over_the_limit_get_429_with_retry_after(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, rate_limit_per_s=0.5, rate_limit_burst=2)
    statuses = []
    for i in range(3):
        resp = await client.post("/e", json={"e": "send", "s": "a", "r": f"r{i}"})
        statuses.append(resp.status)
    assert statuses == [204, 204, 429]
    assert await resp.json() == {"error": "rate_limited", "retry_after_s": 2}
    assert resp.headers["Retry-After"] == "2"  # one token at 0.5/s
    assert resp.headers["Access-Control-Allow-Origin"] == "*"  # readable by the page's script
    await client.close()
    assert [e["recipient"] for e in sink.events()] == ["r0", "r1"]
    assert metric_value(metrics, "beacon_rate_limited_total", endpoint="events") == 1


async def test_limited_requests_are_counted_once_and_timed_like_the_others(make_client, metrics):
    """Through aiohttp (the fast path does the same: tests/integration/test_fastpath.py) a
    limited request is one request, one beacon_rate_limited_total and one
    beacon_hot_path_seconds sample."""
    client = await make_client(rate_limit_per_s=0.01, rate_limit_burst=2)
    for i in range(5):  # 2 tokens: 3 pixels over the limit
        assert (await client.get(f"/p.gif?e=open&s=a&r=r{i}")).status == 200
    for i in range(3):  # the same client's bucket: every POST over the limit
        assert (await client.post("/e", json={"e": "send", "r": f"r{i}"})).status == 429

    def sample(name: str, **labels: str) -> float:
        return metric_value(metrics, name, **labels)

    assert sample("beacon_rate_limited_total", endpoint="pixel") == 3
    assert sample("beacon_requests_total", endpoint="pixel", outcome="rate_limited") == 3
    assert sample("beacon_hot_path_seconds_count", endpoint="pixel") == 5
    assert sample("beacon_rate_limited_total", endpoint="events") == 3
    assert sample("beacon_requests_total", endpoint="events", outcome="429") == 3
    assert sample("beacon_hot_path_seconds_count", endpoint="events") == 3


async def test_buckets_are_per_client_ip_from_the_trusted_header(make_client, metrics):
    client = await make_client(
        rate_limit_per_s=0.01, rate_limit_burst=1, forwarded_header="X-Forwarded-For"
    )

    async def post(forwarded: str) -> int:
        resp = await client.post("/e", json={"e": "send"}, headers={"X-Forwarded-For": forwarded})
        return resp.status

    assert await post("203.0.113.1") == 204
    assert await post("203.0.113.2") == 204  # another client: its own bucket
    assert await post("203.0.113.1") == 429
    # What a client puts left of the proxy's address is its own claim: it changes nothing.
    assert await post("198.51.100.9, 203.0.113.1") == 429


async def test_health_metrics_and_clicks_are_not_limited(make_client):
    client = await make_client(rate_limit_per_s=0.01, rate_limit_burst=1)
    for _ in range(5):
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/c?d=https://example.com/")).status == 400  # unsigned: refused


def test_token_bucket_refills_at_the_rate_up_to_the_burst():
    now = [100.0]
    buckets = TokenBuckets(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == 0.5  # one token takes 0.5 s at 2/s
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    now[0] += 60  # a long pause saves up no more than the burst
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_token_buckets_keep_at_most_max_keys():
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, max_keys=100, clock=lambda: 0.0)
    for i in range(10_000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
    assert len(buckets) == 100
    assert buckets.take("10.0.39.15") > 0  # among the most recent: still limited
    assert buckets.take("10.0.0.0") == 0.0  # long forgotten: a fresh bucket


def test_the_least_recently_seen_key_is_forgotten_not_the_oldest():
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, max_keys=3, clock=lambda: 0.0)
    for key in ("a", "b", "c"):
        assert buckets.take(key) == 0.0  # each spends its only token
    assert buckets.take("a") > 0  # seen again: now the most recent
    buckets.take("d")  # a fourth key: one of the three goes
    assert buckets.take("a") > 0  # remembered, so still limited (first in would drop it)
    assert buckets.take("b") == 0.0  # forgotten: a fresh bucket


def test_the_limiter_remembers_50_000_clients(settings):
    assert rate_limit_buckets(settings) is None  # off by default
    buckets = rate_limit_buckets(replace(settings, rate_limit_per_s=1.0))
    assert buckets is not None
    assert MAX_CLIENTS == 50_000  # docs/security.md: ~10 MB at most
    assert buckets.max_keys == MAX_CLIENTS
