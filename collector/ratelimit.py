"""An optional per-client-IP rate limit (token buckets), off by default.

Over the limit, a pixel still gets its GIF (a broken image helps nobody, and the client cannot
act on an error) but the event is not recorded; POST /e gets a 429 with Retry-After, which
sendBeacon and fetch callers can honour. Both are counted in beacon_rate_limited_total, and
counted and timed as requests like any other answer, by the collector (collector/handlers.py)
for this middleware and the pixel fast path alike. Click redirects are not limited: a reader
following a link must arrive.

An IPv4 client has one address; an IPv6 one is usually given a whole /64 (RFC 6177), so
IPv6 addresses share a bucket per network of BEACON_RATE_LIMIT_IPV6_PREFIX bits.
"""

from __future__ import annotations

import math
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from collector.errors import json_error
from collector.pixel import GIF_BYTES, PIXEL_HEADERS
from collector.privacy import COMPAT_PREFIX, MAPPED_PREFIX
from collector.settings import Settings

# One bucket is ~200 bytes: 50k client IPs in memory is ~10 MB. Beyond it the least recently
# seen IP is forgotten, and starts again with a full bucket.
MAX_CLIENTS = 50_000
# The endpoints that record events, by path.
LIMITED = {"/p.gif": "pixel", "/e": "events"}
IPV6_BITS = 128


def bucket_key(ip: str, ipv6_prefix_bits: int) -> str:
    """The bucket of a client address: an IPv4 address itself, an IPv6 one its network.

    IPv4 written as IPv6 (::ffff:a.b.c.d from a dual-stack socket) stays one address: a /64
    of those would be every IPv4 client at once. Text that is no IPv6 address is its own key.
    """
    if ":" not in ip:
        return ip
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])  # without a zone id
    except (OSError, ValueError):
        return ip
    if packed[:12] in (MAPPED_PREFIX, COMPAT_PREFIX):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    host_bits = IPV6_BITS - ipv6_prefix_bits
    network = int.from_bytes(packed, "big") >> host_bits << host_bits
    return f"{network:032x}/{ipv6_prefix_bits}"


class TokenBuckets:
    """A token bucket per key: `rate_per_s` tokens a second, at most `burst` saved up.

    Buckets live in LRU order; at most `max_keys` of them, so memory stays bounded whatever
    the number of clients.
    """

    __slots__ = ("_buckets", "_clock", "burst", "ipv6_prefix_bits", "max_keys", "rate_per_s")

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_keys: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
        ipv6_prefix_bits: int = IPV6_BITS,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self.ipv6_prefix_bits = ipv6_prefix_bits
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, at_s]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """0.0 when `key` (a client address) may go ahead (a token is spent); else seconds
        until it may."""
        key = bucket_key(key, self.ipv6_prefix_bits)
        now_s = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = [self.burst, now_s]
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now_s - bucket[1]) * self.rate_per_s)
            bucket[1] = now_s
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate_per_s


def rate_limit_buckets(settings: Settings) -> TokenBuckets | None:
    """The buckets when BEACON_RATE_LIMIT_PER_S is set, else None. One set per process: the
    middleware and the pixel fast path (collector/fastpath.py) take from the same buckets."""
    if not settings.rate_limit_per_s:
        return None
    return TokenBuckets(
        settings.rate_limit_per_s,
        settings.rate_limit_burst,
        ipv6_prefix_bits=settings.rate_limit_ipv6_prefix,
    )


class Limiter(Protocol):
    """What the middleware asks of the collector (collector/handlers.py's Collector)."""

    rate_buckets: TokenBuckets | None

    def over_limit(self, endpoint: str, request: web.Request) -> float: ...

    def pixel_done(self, outcome: str, started: float) -> None: ...

    def events_done(self, outcome: str, started: float) -> None: ...


def rate_limit_middlewares(limiter: Limiter) -> list[Middleware]:
    """The rate-limit middleware over the limiter's buckets, or none when the limit is off (no
    cost)."""
    if limiter.rate_buckets is None:
        return []

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = LIMITED.get(request.path)
        if endpoint is None:
            return await handler(request)
        started = time.perf_counter()
        wait_s = limiter.over_limit(endpoint, request)
        if not wait_s:
            return await handler(request)
        if endpoint == "pixel":
            limiter.pixel_done("rate_limited", started)
            return web.Response(body=GIF_BYTES, headers=PIXEL_HEADERS)
        retry_after_s = math.ceil(wait_s)
        response = json_error(429, "rate_limited", retry_after_s=retry_after_s)
        response.headers["Retry-After"] = str(retry_after_s)
        limiter.events_done("429", started)
        return response

    return [rate_limit]
