"""What the address lookups cost, in one process: the country (collector/geo.py) and the
network class (collector/networks.py).

    python -m loadtest.bench_geo [--requests 10000] [--rounds 5] [--geo-db PATH]
                                 [--network-db PATH]

Prints, for each, the data's load time and the memory it adds and microseconds per lookup (a
cache hit, a miss for IPv4 and for IPv6; for countries also the IPv6 table as a list of Python
ints beside the two arrays the collector keeps), then the pixel fast path's cost per request
with no lookup, the country alone and both, run alternately in the same rounds: from one
address (cache hits) and from a new address each time (every lookup a miss). Figures are the
fastest chunk of 1,000 calls in microseconds per call (noise on a shared machine only adds
time): compare them within one run. docs/performance.md "Address lookups" quotes them.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path

from collector.address_table import AddressTable, CachedLookup, release_freed_memory
from collector.geo_data import data_files
from loadtest.hotpath import CHUNK, HEADERS

PAGE = 4096  # bytes per page in /proc/self/statm
HEAD = (
    "GET /p.gif?e=open&s=shop&c=spring-sale&m=m-1042&r=u-77 HTTP/1.1\r\n"
    + "\r\n".join(f"{name}: {value}" for name, value in HEADERS.items())
).encode()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def best_us(calls: Callable[[int, int], None], total: int, rounds: int) -> float:
    """`calls(start, stop)` makes calls start..stop-1; the fastest chunk of CHUNK calls over
    `rounds` passes of `total`, in us per call."""
    best = float("inf")
    for _ in range(rounds):
        for start in range(0, total - CHUNK + 1, CHUNK):
            began = time.perf_counter()
            calls(start, start + CHUNK)
            best = min(best, time.perf_counter() - began)
    return best / CHUNK * 1e6


def public_addresses(table: AddressTable, count: int, v6: bool, seed: int) -> list[str]:
    """`count` distinct addresses that have a label, spread over the table's segments."""
    import ipaddress

    rng = random.Random(seed)
    found: set[str] = set()
    codes = table.v6_codes if v6 else table.v4_codes
    known = [i for i in range(len(codes) - 1) if codes[i]]
    while len(found) < count:
        i = rng.choice(known)
        if v6:
            low = table.v6_high[i] << 64 | table.v6_low[i]
            high = (table.v6_high[i + 1] << 64 | table.v6_low[i + 1]) - 1
            found.add(str(ipaddress.IPv6Address(rng.randint(low, high))))
        else:
            low, high = table.v4_starts[i], table.v4_starts[i + 1] - 1
            found.add(str(ipaddress.IPv4Address(rng.randint(low, high))))
    return sorted(found, key=lambda _: rng.random())


def measured_load(load: Callable[[], CachedLookup]) -> tuple[CachedLookup, float, int]:
    """`load()`, the seconds it took and the RSS bytes it added (what earlier work freed is
    handed back first: not this load's to count)."""
    gc.collect()
    release_freed_memory()
    before = rss_bytes()
    started = time.perf_counter()
    lookup = load()
    spent_s = time.perf_counter() - started
    gc.collect()
    return lookup, spent_s, rss_bytes() - before


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=10_000, help="per round and case")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--geo-db", default="", help="BEACON_GEO_DB (default: the installed data)")
    p.add_argument(
        "--network-db", default="", help="BEACON_NETWORK_DB (default: the iporigin package's)"
    )
    opts = p.parse_args(argv)
    n, rounds = max(opts.requests, CHUNK), opts.rounds

    from collector import geo

    lookup, first_s, added = measured_load(lambda: geo.load_countries(opts.geo_db))
    table = lookup.table
    if table is None:
        sys.exit("no country data: `make install` (with npm), or --geo-db PATH")
    array_bytes = table.array_bytes
    files = data_files([Path(x) for x in opts.geo_db.split(",") if x] or [geo.DEFAULT_DIR])
    again = []
    for _ in range(2):
        began = time.perf_counter()
        geo.CountryTable.from_files(files)
        again.append(time.perf_counter() - began)
    release_freed_memory()
    print(f"country data: {', '.join(str(f) for f in files)}")
    print(f"  {len(table.v4_starts):,} IPv4 + {len(table.v6_high):,} IPv6 segments")
    print(f"  load, first (as a collector starts)      {first_s:7.2f} s"
          f" (again: {', '.join(f'{s:.2f}' for s in again)} s)")  # fmt: skip
    print(f"  RSS added by the load                    {added / 1e6:7.1f} MB"
          f" (the arrays: {array_bytes / 1e6:.1f} MB)")  # fmt: skip

    v4 = public_addresses(table, n, v6=False, seed=4)
    v6 = public_addresses(table, n, v6=True, seed=6)
    print(f"lookup, us per call (fastest chunk of {CHUNK:,}; {rounds} rounds of {n:,}):")
    print_lookups(lookup, v4, v6, n, rounds)
    print_ipv6_as_ints(table, v6, n, rounds)
    print_networks(opts.network_db, n, rounds)
    print_pixel_path(opts.geo_db, opts.network_db, v4, n, rounds)


def print_lookups(lookup: CachedLookup, v4: list[str], v6: list[str], n: int, rounds: int) -> None:
    """us per call: a cache hit, and misses (a fresh cache per chunk) for each family."""
    table = lookup.table

    def misses(addresses: list[str]) -> Callable[[int, int], None]:
        def calls(start: int, stop: int) -> None:
            fresh = CachedLookup(table)  # empty: every address a miss
            for ip in addresses[start:stop]:
                fresh(ip)

        return calls

    def hits(start: int, stop: int) -> None:
        for _ in range(start, stop):
            lookup(v4[0])

    lookup(v4[0])
    for label, calls in (
        ("cache hit", hits),
        ("miss, IPv4 (parse + bisect + cache insert)", misses(v4)),
        ("miss, IPv6 (parse + two bisects + cache insert)", misses(v6)),
    ):
        print(f"  {label:<52} {best_us(calls, n, rounds):7.3f}")


def print_networks(network_db: str, n: int, rounds: int) -> None:
    """The network table: load, memory, lookups (on addresses it flags: in its segments)."""
    from collector import networks

    lookup, first_s, added = measured_load(lambda: networks.load_networks(network_db))
    table = lookup.table
    if table is None:
        sys.exit("no network data: `make install`, or --network-db PATH")
    path = Path(network_db) if network_db else networks.bundled_file()
    again = []
    for _ in range(2):
        began = time.perf_counter()
        networks.read_table(path.read_bytes())
        again.append(time.perf_counter() - began)
    print(f"network data: {path}")
    print(f"  {len(table.v4_starts):,} IPv4 + {len(table.v6_high):,} IPv6 segments")
    print(f"  load, first (as a collector starts)      {first_s:7.3f} s"
          f" (again: {', '.join(f'{s:.3f}' for s in again)} s)")  # fmt: skip
    print(f"  RSS added by the load                    {added / 1e6:7.1f} MB"
          f" (the arrays: {table.array_bytes / 1e6:.2f} MB)")  # fmt: skip
    print(f"lookup, us per call (fastest chunk of {CHUNK:,}; {rounds} rounds of {n:,}):")
    v4 = public_addresses(table, n, v6=False, seed=14)
    v6 = public_addresses(table, n, v6=True, seed=16)
    print_lookups(lookup, v4, v6, n, rounds)


def print_ipv6_as_ints(table, v6: list[str], n: int, rounds: int) -> None:  # type: ignore[no-untyped-def]
    """The alternative layout for IPv6: one sorted list of 128-bit Python ints."""
    import socket

    starts = [high << 64 | low for high, low in zip(table.v6_high, table.v6_low, strict=True)]
    list_bytes = sys.getsizeof(starts) + sum(sys.getsizeof(s) for s in starts)
    arrays_bytes = 8 * (len(table.v6_high) + len(table.v6_low))
    names, codes = table.names, table.v6_codes

    def as_ints(start: int, stop: int) -> None:
        for ip in v6[start:stop]:
            number = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
            names[codes[bisect_right(starts, number) - 1]]

    def as_arrays(start: int, stop: int) -> None:
        for ip in v6[start:stop]:
            table.country(ip)

    print(f"  {'IPv6 table, no cache: two arrays of 64-bit halves':<52} "
          f"{best_us(as_arrays, n, rounds):7.3f}  ({arrays_bytes / 1e6:.1f} MB)")  # fmt: skip
    print(f"  {'IPv6 table, no cache: a list of Python ints':<52} "
          f"{best_us(as_ints, n, rounds):7.3f}  ({list_bytes / 1e6:.1f} MB)")  # fmt: skip


def print_pixel_path(geo_db: str, network_db: str, v4: list[str], n: int, rounds: int) -> None:
    """The fast path's work per pixel (parse the head, build and buffer the event, count it),
    with no lookup, the country alone and both, alternately in each round."""
    from prometheus_client import CollectorRegistry

    from collector.app import COLLECTOR, create_app
    from collector.fastpath import parse_head
    from collector.metrics import CollectorMetrics
    from collector.settings import Settings
    from collector.sinks.memory import MemorySink

    data_dir = Path(tempfile.gettempdir())
    base = {"data_dir": data_dir, "secret": "geo-bench-secret-0", "sink": "memory",
            "buffer_max_events": 4 * n}  # fmt: skip
    settings = {
        "none": Settings(**base, geo_db="off", network_db="off"),
        "country": Settings(**base, geo_db=geo_db, network_db="off"),
        "both": Settings(**base, geo_db=geo_db, network_db=network_db),
    }
    sources = {"one address": [v4[0]] * n, "a new address each time": v4}
    best = {(s, g): float("inf") for s in sources for g in settings}
    for _ in range(rounds):
        for source, addresses in sources.items():
            for lookups, chosen in settings.items():
                # A fresh app each time: empty caches and an empty buffer.
                app = create_app(chosen, MemorySink(), CollectorMetrics(CollectorRegistry()))
                collector = app[COLLECTOR]
                for start in range(0, n - CHUNK + 1, CHUNK):
                    chunk = addresses[start : start + CHUNK]
                    began = time.perf_counter()
                    for ip in chunk:
                        request = parse_head(HEAD)
                        assert not isinstance(request, str)
                        request.remote = ip
                        collector.pixel_done(collector.pixel_outcome(request, None), began)
                    spent = (time.perf_counter() - began) / CHUNK * 1e6
                    best[source, lookups] = min(best[source, lookups], spent)
    print("pixel fast path per request, us (parse_head + pixel_outcome + pixel_done),")
    print("  no lookup, the country alone and both, alternately in each round:")
    print(f"  {'':<28} {'none':>7} {'country':>8} {'both':>7} {'network added':>14}")
    for source in sources:
        none, country, both = (best[source, k] for k in settings)
        print(f"  {source:<28} {none:7.2f} {country:8.2f} {both:7.2f} {both - country:+14.2f}")


if __name__ == "__main__":
    main()
