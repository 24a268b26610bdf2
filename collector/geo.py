"""The country of a client address: the IP-to-country data loaded once per process into
compact sorted arrays, a bisect, and a bounded cache in front (docs/privacy.md "Countries").

The collector asks with the full client address, before it is truncated or dropped, so the
country works in every BEACON_IP_MODE; the address itself is only a cache key in memory. A
cache hit is one dict lookup; a miss a parse and a bisect (docs/performance.md "Country
lookup" has the figures of `python -m loadtest.bench_geo`).
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
import sys
import time
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import repeat
from operator import and_, rshift
from pathlib import Path

from collector.geo_data import (
    NOT_GLOBAL_V4,
    NOT_GLOBAL_V6,
    V4_TOP,
    V6_TOP,
    data_files,
    read_ranges,
    segments,
)
from contract.geo import ATTRIBUTION

log = logging.getLogger("beacon.collector")

# Where `make install` and the image put the default data set (ip-location-db's
# geo-whois-asn-country: deploy/geo-data.sh), beside the Python that runs the collector.
DEFAULT_DIR = Path(sys.prefix) / "share" / "beacon" / "geo"
OFF = "off"
# Distinct addresses remembered; past it the older half goes (see CountryLookup). A visitor
# sends several events from one address, and a burst of new ones costs a bisect each.
CACHE_MAX_ENTRIES = 65_536
LOW_64 = 2**64 - 1
V6_HALVES = struct.Struct(">QQ").unpack  # 16 bytes -> (high, low); ~0.3 us less than from_bytes


@dataclass(frozen=True)
class CountryTable:
    """The loaded data: per family the segment starts and their countries' indexes.

    IPv4 starts in one array of 32-bit numbers; IPv6 starts split into their high and low 64
    bits, two arrays: 16 bytes a segment, where a list of Python ints costs ~52.
    """

    names: tuple[str, ...]  # index -> country code; 0 is ""
    v4_starts: array[int]
    v4_codes: array[int]
    v6_high: array[int]
    v6_low: array[int]
    v6_codes: array[int]
    skipped_lines: int = 0  # lines of the files that were no range (a header, junk)

    @classmethod
    def from_files(cls, files: list[Path]) -> CountryTable:
        """Read `files` (geo_data's formats); raises OSError, UnicodeDecodeError, ValueError."""
        ranges = read_ranges(files)
        v4 = segments(ranges.v4, V4_TOP, NOT_GLOBAL_V4)
        v6 = segments(ranges.v6, V6_TOP, NOT_GLOBAL_V6)
        if len(v4.starts) + len(v6.starts) <= 2:
            raise ValueError("no address range in it")
        return cls(
            tuple(ranges.names),
            array("I", v4.starts),
            array("H", v4.codes),
            array("Q", map(rshift, v6.starts, repeat(64))),
            array("Q", map(and_, v6.starts, repeat(LOW_64))),
            array("H", v6.codes),
            ranges.skipped_lines,
        )

    @property
    def segments(self) -> int:
        return len(self.v4_starts) + len(self.v6_high)

    def country(self, ip: str) -> str:
        """The country of an address in text ("" when unknown, not global, or no address);
        an IPv4-mapped IPv6 address (a dual-stack socket's IPv4 peer) is its IPv4 one."""
        try:
            if ":" not in ip:
                return self.v4(int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big"))
            packed = socket.inet_pton(socket.AF_INET6, ip)
        except (OSError, ValueError):  # not an address (a scope id, junk): nothing to say
            return ""
        high, low = V6_HALVES(packed)
        if high == 0 and low >> 32 == 0xFFFF:  # ::ffff:0:0/96
            return self.v4(low & 0xFFFF_FFFF)
        return self.v6(high, low)

    def v4(self, number: int) -> str:
        return self.names[self.v4_codes[bisect_right(self.v4_starts, number) - 1]]

    def v6(self, high: int, low: int) -> str:
        highs = self.v6_high
        i = bisect_right(highs, high) - 1  # the last segment whose high half is <= high
        if highs[i] == high:
            # Segments that start inside this /64 (few): the last at or below `low`, else
            # the one before them, which runs into this /64.
            first = bisect_left(highs, high, 0, i)
            i = max(bisect_right(self.v6_low, low, first, i + 1), first) - 1
        return self.names[self.v6_codes[i]]


class CountryLookup:
    """`lookup(ip)` -> country code, cached by the address text.

    Two generations of at most half the bound each: a hit in the young one is one dict
    lookup; the old one's hits move to the young one; when the young one is full it becomes
    the old one. Least recently used goes first, without an order kept per hit.
    """

    __slots__ = ("_half", "_old", "_young", "table")

    def __init__(self, table: CountryTable | None, max_entries: int = CACHE_MAX_ENTRIES) -> None:
        self.table = table  # None: no data, every country is ""
        self._half = max(1, max_entries // 2)
        self._young: dict[str, str] = {}
        self._old: dict[str, str] = {}

    def __call__(self, ip: str) -> str:
        country = self._young.get(ip)
        if country is None:
            country = self._miss(ip)
        return country

    def _miss(self, ip: str) -> str:
        country = self._old.get(ip)
        if country is None:
            country = "" if self.table is None else self.table.country(ip)
        if len(self._young) >= self._half:
            self._old = self._young
            self._young = {}
        self._young[ip] = country
        return country

    @property
    def cached(self) -> int:
        """Addresses in the cache (not __len__: an empty cache must not make the lookup false)."""
        return len(self._young) + len(self._old)


_loaded: dict[tuple[str, ...], CountryTable | None] = {}


def load_countries(setting: str) -> CountryLookup:
    """The lookup for BEACON_GEO_DB: "" the installed data, `off` none, else a directory or
    comma-separated files. The data is read once per process (each worker its own); when it
    cannot be, one log line says why and every country is ""."""
    if setting.strip().lower() == OFF:
        return CountryLookup(None)
    paths = tuple(p.strip() for p in setting.split(",") if p.strip()) or (str(DEFAULT_DIR),)
    if paths not in _loaded:
        _loaded[paths] = _read(paths, default=not setting.strip())
    return CountryLookup(_loaded[paths])


def _read(paths: tuple[str, ...], default: bool) -> CountryTable | None:
    started = time.perf_counter()
    try:
        table = CountryTable.from_files(data_files(Path(p) for p in paths))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        hint = " (`make install` puts it there when npm is found)" if default else ""
        log.warning(
            "no country data, every event's country stays empty: %s%s; BEACON_GEO_DB names "
            "another (docs/privacy.md)",
            exc,
            hint,
        )
        return None
    finally:
        release_freed_memory()
    skipped = f" ({table.skipped_lines} lines that are no range left out)"
    log.info(
        "country data: %d ranges from %s in %.1f s%s. %s",
        table.segments,
        ", ".join(paths),
        time.perf_counter() - started,
        skipped if table.skipped_lines else "",
        ATTRIBUTION,
    )
    return table


def release_freed_memory() -> None:
    """Hand back to the system what reading the files used and freed (~50 MB of strings and
    ints): glibc keeps freed memory in its heap, and each worker would carry it for good."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator decides
        pass
