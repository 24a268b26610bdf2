"""An optional per-client-IP rate limit (token buckets), off by default.

Over the limit, a pixel still gets its GIF (a broken image helps nobody, and the client cannot
act on an error) but the event is not recorded; POST /e gets a 429 with Retry-After, which
sendBeacon and fetch callers can honour. Both are counted in beacon_rate_limited_total.
Click redirects are not limited: a reader following a link must arrive.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from collector.handlers import json_error
from collector.metrics import CollectorMetrics
from collector.pixel import GIF_BYTES, PIXEL_HEADERS
from collector.settings import Settings

# One bucket is ~200 bytes: 50k client IPs in memory is ~10 MB. Beyond it the least recently
# seen IP is forgotten, and starts again with a full bucket.
MAX_CLIENTS = 50_000
# The endpoints that record events, by path.
LIMITED = {"/p.gif": "pixel", "/e": "events"}


class TokenBuckets:
    """A token bucket per key: `rate_per_s` tokens a second, at most `burst` saved up.

    Buckets live in LRU order; at most `max_keys` of them, so memory stays bounded whatever
    the number of clients.
    """

    __slots__ = ("_buckets", "_clock", "burst", "max_keys", "rate_per_s")

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_keys: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, at_s]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """0.0 when `key` may go ahead (a token is spent); else seconds until it may."""
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
    return TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)


def rate_limit_middlewares(
    buckets: TokenBuckets | None,
    client_ip: Callable[[web.Request], str],
    metrics: CollectorMetrics,
) -> list[Middleware]:
    """The rate-limit middleware over `buckets`, or none when the limit is off (no cost)."""
    if buckets is None:
        return []

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = LIMITED.get(request.path)
        if endpoint is None:
            return await handler(request)
        wait_s = buckets.take(client_ip(request))
        if not wait_s:
            return await handler(request)
        metrics.rate_limited.labels(endpoint).inc()
        if endpoint == "pixel":
            metrics.requests.labels("pixel", "rate_limited").inc()
            return web.Response(body=GIF_BYTES, headers=PIXEL_HEADERS)
        metrics.requests.labels("events", "429").inc()
        retry_after_s = math.ceil(wait_s)
        response = json_error(429, "rate_limited", retry_after_s=retry_after_s)
        response.headers["Retry-After"] = str(retry_after_s)
        return response

    return [rate_limit]
