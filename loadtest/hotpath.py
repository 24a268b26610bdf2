"""Microbenchmark of the pixel hot path, whole and step by step, in one process.

    python -m loadtest.hotpath [--requests 20000] [--multiprocess]

The whole handler runs on prebuilt mocked requests (no socket, no HTTP parsing: that part is
the bare aiohttp floor in `make bench`); each step runs alone on the same inputs. Figures are
the fastest chunk of 1,000 calls in microseconds per call (noise on a shared machine only adds
time): compare them within one run, and before and after a change. `--multiprocess` runs it
with PROMETHEUS_MULTIPROC_DIR set, as each worker of `beacon serve --workers N` does, where
every metric update also writes to an mmap file.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PATH = "/p.gif?e=open&s=shop&c=spring-sale&m=m-1042&r=u-77"
HEADERS = {
    "Host": "t.example.com",
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
    "Referer": "https://mail.example.com/",
}
CHUNK = 1000  # calls per timed chunk
UTM_URL = "https://shop.example.com/spring/sale?utm_source=mail&utm_campaign=spring&id=7"


def best_us(step: Callable[[], object], calls: int, repeats: int) -> float:
    """`step` called `calls` times, `repeats` times over, timed in chunks of CHUNK calls: the
    fastest chunk in us per call (on a shared machine noise only ever adds time)."""
    best = float("inf")
    for _ in range(repeats):
        for _ in range(max(1, calls // CHUNK)):
            started = time.perf_counter()
            for _ in range(CHUNK):
                step()
            best = min(best, time.perf_counter() - started)
    return best / CHUNK * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--multiprocess", action="store_true", help="metrics in multiprocess mode")
    opts = p.parse_args()
    if opts.multiprocess and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        with tempfile.TemporaryDirectory(prefix="beacon-hotpath-") as directory:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
            argv = [sys.executable, "-m", "loadtest.hotpath", *sys.argv[1:]]
            sys.exit(subprocess.run(argv, env=env, check=False).returncode)

    # Imported after the environment is settled: prometheus_client picks its mode at import.
    import orjson
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request
    from prometheus_client import CollectorRegistry
    from yarl import URL

    from collector import event as ev
    from collector.app import COLLECTOR, create_app
    from collector.metrics import CollectorMetrics
    from collector.pixel import GIF_BYTES, PIXEL_HEADERS
    from collector.privacy import VisitorHasher, anonymise_ip
    from collector.settings import Settings
    from collector.sinks.memory import MemorySink
    from collector.tallies import CounterTally, HistogramTally

    n, repeats = opts.requests, opts.repeats
    multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    settings = Settings(
        data_dir=Path(tempfile.gettempdir()),
        secret="hotpath-bench-secret",
        sink="memory",
        buffer_max_events=n * (repeats + 1),
    )
    metrics = CollectorMetrics(CollectorRegistry(), Path(multiproc) if multiproc else None)
    app = create_app(settings, MemorySink(), metrics)
    collector = app[COLLECTOR]

    class Transport:  # the peer address the handler reads (request.remote)
        def get_extra_info(self, name: str, default: object = None) -> object:
            return ("203.0.113.7", 50000) if name == "peername" else default

    def requests() -> list[web.Request]:
        return [
            make_mocked_request("GET", PATH, headers=HEADERS, app=app, transport=Transport())
            for _ in range(n)
        ]

    loop = asyncio.new_event_loop()

    gc_collections = [0]

    async def chunks(batch: list[web.Request]) -> float:
        """The fastest chunk of CHUNK handler calls in seconds per call."""
        best = float("inf")
        for start in range(0, len(batch) - CHUNK + 1, CHUNK):
            started = time.perf_counter()
            for request in batch[start : start + CHUNK]:
                await collector.pixel(request)
            best = min(best, (time.perf_counter() - started) / CHUNK)
        return best

    def whole() -> float:
        """Seconds per handler call over n calls; counts the gen-0 collections they caused."""
        batch = requests()
        collections = gc.get_stats()[0]["collections"]
        best = loop.run_until_complete(chunks(batch))
        gc_collections[0] += gc.get_stats()[0]["collections"] - collections
        return best

    whole_us = min(whole() for _ in range(repeats)) * 1e6
    gc_per_10k = gc_collections[0] / (n * repeats) * 10_000

    now = ev.now_ms()
    hasher = VisitorHasher(b"hotpath")
    new_id = ev.Uuid7Source()
    fields = {"e": "open", "s": "shop", "c": "spring-sale", "m": "m-1042", "r": "u-77"}

    def build() -> dict:
        return ev.build_event(
            fields, {}, page_url=HEADERS["Referer"], user_agent=HEADERS["User-Agent"],
            ip="203.0.113.0", visitor_id=1, dnt=False, transport="pixel", received_ms=now,
            keep_query=frozenset(), notes=[], event_id=new_id(now),
        )  # fmt: skip

    row = build()

    requests_counter = metrics.requests.labels("pixel", "recorded")
    hot_path_child = metrics.hot_path_seconds.labels("pixel")
    # What the handler does instead (collector/tallies.py): folded into the children later.
    requests_tally = CounterTally(requests_counter)
    hot_path_tally = HistogramTally(hot_path_child)
    steps: dict[str, Callable[[], object]] = {
        "query string -> MultiDict (yarl, new URL)": lambda: URL(PATH).query,
        "request.headers.get x4 (UA, Referer, DNT, Sec-GPC)": lambda: None,
        "os.urandom(10) (UUIDv7 randomness, a syscall)": lambda: os.urandom(10),
        "uuid7() (urandom + int ops + hex formatting)": lambda: ev.uuid7(now),
        "Uuid7Source() (4 KiB random pool, one format)": lambda: new_id(now),
        "anonymise_ip() IPv4 (string checks)": lambda: anonymise_ip("203.0.113.7", "truncate"),
        "anonymise_ip() IPv6 (inet_pton + inet_ntop)": lambda: anonymise_ip(
            "2001:db8:1:2:3:4:5:6", "truncate"
        ),
        "visitor_id() (blake2b keyed, one encode)": lambda: hasher.visitor_id(
            "shop", "203.0.113.7", HEADERS["User-Agent"], now
        ),
        "split_url() (no query)": lambda: ev.split_url(HEADERS["Referer"], frozenset()),
        "split_url() (utm query)": lambda: ev.split_url(UTM_URL, frozenset()),
        "build_event() (incl. event id, URL split)": build,
        "orjson.dumps(row)": lambda: orjson.dumps(row),
        "counter.labels(...).inc()": lambda: metrics.requests.labels("pixel", "recorded").inc(),
        "counter.inc() on a kept child": lambda: requests_counter.inc(),
        "histogram.labels(...).observe()": lambda: metrics.hot_path_seconds.labels("pixel").observe(
            2e-5
        ),
        "histogram.observe() on a kept child": lambda: hot_path_child.observe(2e-5),
        "CounterTally.inc() (the handler's)": requests_tally.inc,
        "HistogramTally.observe() (the handler's)": lambda: hot_path_tally.observe(2e-5),
        "web.Response(body=GIF, headers=prebuilt)": lambda: web.Response(
            body=GIF_BYTES, headers=PIXEL_HEADERS
        ),
        "time.perf_counter() x2 + time.time_ns()": lambda: (
            time.perf_counter(),
            time.perf_counter(),
            time.time_ns(),
        ),
    }
    sample = requests()[0]
    steps["request.headers.get x4 (UA, Referer, DNT, Sec-GPC)"] = lambda: (
        sample.headers.get("User-Agent"),
        sample.headers.get("Referer"),
        sample.headers.get("DNT"),
        sample.headers.get("Sec-GPC"),
    )

    print(f"pixel hot path, {n:,} requests x {repeats}, metrics "
          f"{'multiprocess (mmap)' if multiproc else 'in-process'}")  # fmt: skip
    print(f"  {'whole handler: Collector.pixel() on mocked requests':<58} {whole_us:7.2f} us")
    print(f"  {'gen-0 GC collections per 10k requests':<58} {gc_per_10k:7.1f}")
    for label, step in steps.items():
        print(f"  {label:<58} {best_us(step, n, repeats):7.2f} us")
    print_kept_output(orjson.dumps, row, n, repeats)
    loop.close()


def kept_mean_us(dumps: Callable[[Any], bytes], row: dict, n: int, copy: bool) -> float:
    """`dumps(row)` with its output kept as the buffer keeps events (2,000 until the tick),
    as it is or as an exact-size copy; the mean over n calls, since the cost falls on the
    calls that need fresh memory, which the fastest chunk leaves out."""
    kept: list[bytes] = []
    started = time.perf_counter()
    for _ in range(n):
        blob = dumps(row)
        kept.append(b"%b" % blob if copy else blob)
        if len(kept) >= 2000:
            kept.clear()
    return (time.perf_counter() - started) / n * 1e6


def print_kept_output(dumps: Callable[[Any], bytes], row: dict, n: int, repeats: int) -> None:
    # Alternately, so drift on a shared machine falls on both alike: medians of the means.
    means: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for copy in (False, True):
            means[copy].append(kept_mean_us(dumps, row, n, copy))
    for copy, label in ((False, "as orjson returns it"), (True, "as an exact-size copy")):
        text = f"orjson.dumps(row) kept 2,000 at a time, {label} (mean)"
        print(f"  {text:<58} {statistics.median(means[copy]):7.2f} us")


if __name__ == "__main__":
    main()
