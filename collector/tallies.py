"""Hot-path metric updates kept as plain numbers and added to Prometheus on the buffer's tick.

A prometheus_client `inc()` takes a lock (and with several workers writes an mmap file), and
`observe()` walks the buckets in Python and takes two: together they cost a pixel about a
seventh of its requests per core under load (docs/performance.md). Here a request adds to an
int (and a histogram observation to its bucket's int, found by `bisect` in C), and the sums
go into the real metric children every buffer tick (BEACON_LINGER_MS), before every /metrics
answer and at shutdown. One process therefore always shows exact counts; with several workers
another worker's counts reach the shared files with its next tick.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from collector.aiohttp_compat import histogram_state


class CounterTally:
    """Increments of one counter child."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0

    def inc(self) -> None:
        self.n += 1

    def add(self, n: int) -> None:
        self.n += n

    def fold(self) -> None:
        if self.n:
            n, self.n = self.n, 0
            self.child.inc(n)


class HistogramTally:
    """Observations of one histogram child, counted per bucket.

    Folding adds to the child's per-bucket values and sum, which `observe()` updates one at a
    time; they are not public (tests/unit/test_tallies.py compares the two ways)."""

    __slots__ = ("bounds", "buckets", "counts", "sum", "total")

    def __init__(self, child: Any) -> None:
        # The last bound is +Inf; buckets and sum are the child's own counters.
        self.bounds, self.buckets, self.sum = histogram_state(child)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: the bucket observe() picks (`value <= bound`).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def fold(self) -> None:
        if not self.total and not any(self.counts):
            return
        counts, self.counts = self.counts, [0] * len(self.bounds)
        total, self.total = self.total, 0.0
        for bucket, n in zip(self.buckets, counts, strict=True):
            if n:
                bucket.inc(n)
        self.sum.inc(total)


class Tallies(dict[Any, Any]):
    """The tallies of one labelled metric by label value (a tuple for several labels), each
    made on first use over the metric's child (collector/metrics.py makes every child of a
    counter at 0, so the series is there before anything is counted in it)."""

    def __init__(self, metric: MetricWrapperBase, make: type[CounterTally | HistogramTally]):
        super().__init__()
        self.metric = metric
        self.make = make

    def __missing__(self, key: Any) -> Any:
        child = self.metric.labels(*key) if type(key) is tuple else self.metric.labels(key)
        tally = self[key] = self.make(child)
        return tally

    def fold(self) -> None:
        for tally in list(self.values()):
            tally.fold()
