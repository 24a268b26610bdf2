"""Address ranges with a label each, searched by bisect, and the bounded cache in front: what
the country lookup (collector/geo.py) and the network lookup (collector/networks.py) share.

Both are asked with the full client address, before it is truncated or dropped; the address
is only a cache key in memory. A cache hit is one dict lookup; a miss a parse and a bisect
(docs/performance.md "Address lookups" has the figures of `python -m loadtest.bench_geo`).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import repeat
from operator import and_, rshift
from typing import Self

from collector.geo_data import NOT_GLOBAL_V4, NOT_GLOBAL_V6, V4_TOP, V6_TOP, Family, segments

# Distinct addresses remembered; past it the older half goes (see CachedLookup). A visitor
# sends several events from one address, and a burst of new ones costs a bisect each.
CACHE_MAX_ENTRIES = 65_536
LOW_64 = 2**64 - 1
V6_HALVES = struct.Struct(">QQ").unpack  # 16 bytes -> (high, low); ~0.3 us less than from_bytes


@dataclass(frozen=True)
class AddressTable:
    """Per family the segment starts and their labels' indexes.

    IPv4 starts in one array of 32-bit numbers; IPv6 starts split into their high and low 64
    bits, two arrays: 16 bytes a segment, where a list of Python ints costs ~52.
    """

    names: tuple[str, ...]  # index -> label; 0 is ""
    v4_starts: array[int]
    v4_codes: array[int]
    v6_high: array[int]
    v6_low: array[int]
    v6_codes: array[int]
    skipped_lines: int = 0  # lines of the files that were no range (a header, junk)

    @classmethod
    def from_ranges(
        cls, names: tuple[str, ...], v4: Family, v6: Family, skipped_lines: int = 0
    ) -> Self:
        """The table of inclusive ranges labelled by index into `names`; where ranges overlap
        the more specific wins (geo_data.segments), and the special-purpose blocks (private,
        loopback, ...) are "" whatever the ranges say. Raises ValueError when there is none."""
        four = segments(v4, V4_TOP, NOT_GLOBAL_V4)
        six = segments(v6, V6_TOP, NOT_GLOBAL_V6)
        if len(four.starts) + len(six.starts) <= 2:
            raise ValueError("no address range in it")
        return cls(
            names,
            array("I", four.starts),
            array("H", four.codes),
            array("Q", map(rshift, six.starts, repeat(64))),
            array("Q", map(and_, six.starts, repeat(LOW_64))),
            array("H", six.codes),
            skipped_lines,
        )

    @property
    def segments(self) -> int:
        return len(self.v4_starts) + len(self.v6_high)

    @property
    def array_bytes(self) -> int:
        """What the arrays hold (without the Python objects around them)."""
        arrays = (self.v4_starts, self.v4_codes, self.v6_high, self.v6_low, self.v6_codes)
        return sum(a.itemsize * len(a) for a in arrays)

    def find(self, ip: str) -> str:
        """The label of an address in text ("" when unknown, not global, or no address); an
        IPv4-mapped IPv6 address (a dual-stack socket's IPv4 peer) is its IPv4 one."""
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


class CachedLookup:
    """`lookup(ip)` -> the table's label, cached by the address text.

    Two generations of at most half the bound each: a hit in the young one is one dict
    lookup; the old one's hits move to the young one; when the young one is full it becomes
    the old one. Least recently used goes first, without an order kept per hit.
    """

    __slots__ = ("_half", "_old", "_young", "table")

    def __init__(self, table: AddressTable | None, max_entries: int = CACHE_MAX_ENTRIES) -> None:
        self.table = table  # None: no data, every answer is ""
        self._half = max(1, max_entries // 2)
        self._young: dict[str, str] = {}
        self._old: dict[str, str] = {}

    def __call__(self, ip: str) -> str:
        label = self._young.get(ip)
        if label is None:
            label = self._miss(ip)
        return label

    def _miss(self, ip: str) -> str:
        label = self._old.get(ip)
        if label is None:
            label = "" if self.table is None else self.table.find(ip)
        if len(self._young) >= self._half:
            self._old = self._young
            self._young = {}
        self._young[ip] = label
        return label

    @property
    def cached(self) -> int:
        """Addresses in the cache (not __len__: an empty cache must not make the lookup false)."""
        return len(self._young) + len(self._old)


def release_freed_memory() -> None:
    """Hand back to the system what reading a data file used and freed (~50 MB of strings and
    ints for the countries): glibc keeps freed memory in its heap, and each worker would carry
    it for good."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator decides
        pass
