"""IP-to-country data files read into flat sorted tables for collector/geo.py.

A file holds `start,end,CC` lines: an inclusive range of addresses, as numbers (the `-num`
files of ip-location-db) or as address text (its other files, DB-IP's lite country CSV), and an
ISO 3166-1 alpha-2 code. The ranges become segments: sorted start addresses, each with the
country of every address up to the next start (`""` in the gaps), so a lookup is one bisect.

Half a million lines are read at every collector start, so the common case runs in C loops
(str.split, map, itertools): a clean file of numbers in one pass of each, and only the few
ranges that overlap (the data has some hundreds) through a Python loop.
"""

from __future__ import annotations

import gzip
import ipaddress
import re
import socket
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain, compress, islice, repeat
from operator import add, ge, ne
from pathlib import Path

V4_TOP = 2**32 - 1
V6_TOP = 2**128 - 1
# Two ASCII letters (fullmatch); "ZZ" is what some data sets say for "not known".
CODE_RE = re.compile(r"[A-Za-z]{2}")
UNKNOWN_CODES = frozenset({"ZZ"})
# Addresses no client of a public collector comes from, "" whatever a file says (the data has
# 192.168.0.0/16, 2001:db8::/32 and others under a country): IANA's special-purpose address
# registries (RFC 6890 and later) where not globally reachable, multicast, the reserved
# 240.0.0.0/4; for IPv6 everything outside global unicast 2000::/3 (ULA, link-local,
# multicast, ...) and the special blocks inside it. IPv4-mapped addresses are looked up as IPv4.
NOT_GLOBAL_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
)  # fmt: skip
NOT_GLOBAL_V6 = (
    "::/3", "4000::/2", "8000::/1",  # all but 2000::/3
    "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20",  # IETF, documentation, 6to4
)  # fmt: skip


@dataclass
class Family:
    """One address family's ranges as parallel lists (start, end inclusive, code index)."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)

    def extend(self, starts: Iterable[int], ends: Iterable[int], codes: Iterable[int]) -> None:
        self.starts += starts
        self.ends += ends
        self.codes += codes


@dataclass
class Ranges:
    """What the files said: the ranges per family, the country codes, lines not read."""

    v4: Family = field(default_factory=Family)
    v6: Family = field(default_factory=Family)
    names: list[str] = field(default_factory=lambda: [""])  # code index -> country; 0 is ""
    skipped_lines: int = 0
    _index: dict[str, int] = field(default_factory=lambda: {"": 0})

    def code(self, text: str) -> int:
        """The index of a country code as written in a file; 0 ("") for a bad one."""
        index = self._index.get(text)
        if index is None:
            clean = text.strip().strip('"')
            if not CODE_RE.fullmatch(clean) or clean.upper() in UNKNOWN_CODES:
                index = 0
            elif clean.upper() in self.names:
                index = self.names.index(clean.upper())
            else:
                self.names.append(clean.upper())
                index = len(self.names) - 1
            self._index[text] = index
        return index


@dataclass
class Segments:
    """One family's table: `starts` ascending from 0, `codes[i]` the country index of the
    addresses from starts[i] up to starts[i + 1] - 1."""

    starts: list[int]
    codes: list[int]


def data_files(paths: Iterable[Path]) -> list[Path]:
    """The files to read: each path a file, or a directory whose `*-num.csv` files (else its
    `*.csv` and `*.csv.gz` files) are read; raises OSError for a path that is neither."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(path.glob("*-num.csv")) or sorted(
                [*path.glob("*.csv"), *path.glob("*.csv.gz")]
            )
            if not inside:
                raise FileNotFoundError(f"{path}: no .csv file in it")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return found


def read_ranges(files: Iterable[Path]) -> Ranges:
    """Every range of `files`; raises OSError or UnicodeDecodeError for an unreadable file."""
    ranges = Ranges()
    for path in files:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="ascii") as compressed:
                text = compressed.read()
        else:
            text = path.read_text(encoding="ascii")
        # In a -num file the family is not in the numbers: ip-location-db names its files.
        numbers_v6 = "ipv6" in path.name.lower()
        if not _read_numbers(text, numbers_v6, ranges):
            _read_lines(text, numbers_v6, ranges)
    return ranges


def _read_numbers(text: str, numbers_v6: bool, ranges: Ranges) -> bool:
    """The fast path: a file of `number,number,CC` lines alone, of one family (IPv6 when the
    file's name says so). False, nothing read, for anything else."""
    fields = text.replace("\r\n", "\n").replace("\n", ",").split(",")
    if fields and fields[-1] == "":
        fields.pop()
    if not fields or len(fields) % 3:
        return False
    first, last, codes = fields[0::3], fields[1::3], fields[2::3]
    if not (all(map(str.isdigit, first)) and all(map(str.isdigit, last))):
        return False
    starts, ends = list(map(int, first)), list(map(int, last))
    family, top = (ranges.v6, V6_TOP) if numbers_v6 else (ranges.v4, V4_TOP)
    if max(ends) > top or any(map(ge, starts, map(add, ends, repeat(1)))):  # start > end
        return False  # both families in one file, or a range to check line by line
    index = {code: ranges.code(code) for code in set(codes)}
    family.extend(starts, ends, map(index.__getitem__, codes))
    return True


def _read_lines(text: str, numbers_v6: bool, ranges: Ranges) -> None:
    """Line by line: addresses as text, quotes, a header, both families in one file."""
    for line in text.splitlines():
        row = _parse(line, numbers_v6)
        if row is None:
            ranges.skipped_lines += bool(line.strip())
            continue
        family, start, end, code = row
        (ranges.v4 if family == 4 else ranges.v6).extend((start,), (end,), (ranges.code(code),))


def _parse(line: str, numbers_v6: bool) -> tuple[int, int, int, str] | None:
    """(family, start, end, code) of one line, or None when it is not a range."""
    parts = line.split(",")
    if len(parts) != 3:
        return None
    first, last = parts[0].strip().strip('"'), parts[1].strip().strip('"')
    if first.isdigit() and last.isdigit():
        start, end = int(first), int(last)
        family = 6 if numbers_v6 or end > V4_TOP else 4
    else:
        family = 6 if ":" in first else 4
        start, end = _address(first, family), _address(last, family)
        if start < 0 or end < 0:
            return None
    if start > end or end > (V4_TOP if family == 4 else V6_TOP):
        return None
    return family, start, end, parts[2]


def _address(text: str, family: int) -> int:
    """The number of an address in text; -1 when it is none."""
    try:
        packed = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, text)
    except (OSError, ValueError):
        return -1
    return int.from_bytes(packed, "big")


def segments(ranges: Family, top: int, not_global: Iterable[str]) -> Segments:
    """The table of one family's ranges, with the `not_global` networks cut out ("").

    Where ranges nest or overlap (the data has some), the one that starts later wins, and of
    two with one start the shorter: the more specific entry; of two the same, the later."""
    starts, ends, codes = _ordered(ranges)
    # Each range gives two boundaries, its start (its country) and the address after its end
    # (back to ""); ranges that overlap their successor are swept together instead.
    positions: list[int] = [0]
    countries: list[int] = [0]
    done = 0
    for first in compress(range(len(starts) - 1), map(ge, ends, islice(starts, 1, None))):
        if first < done:
            continue  # inside the group swept just before
        _pairs(starts, ends, codes, done, first, positions, countries)
        done = _sweep(starts, ends, codes, first, positions, countries)
    _pairs(starts, ends, codes, done, len(starts), positions, countries)
    if positions[-1] > top:  # the address after a range that ends at the top
        positions.pop()
        countries.pop()
    # Of boundaries at one address the last holds (a range right after another).
    last = list(chain(map(ne, positions, islice(positions, 1, None)), (True,)))
    table = Segments(list(compress(positions, last)), list(compress(countries, last)))
    for network in not_global:
        net = ipaddress.ip_network(network)
        cut(table, int(net.network_address), int(net.broadcast_address), top)
    return merged(table)


def _pairs(
    starts: list[int],
    ends: list[int],
    codes: list[int],
    first: int,
    after: int,
    positions: list[int],
    countries: list[int],
) -> None:
    """The boundaries of the ranges `first` up to `after`, which overlap nothing, appended."""
    nexts = map(add, ends[first:after], repeat(1))
    positions += chain.from_iterable(zip(starts[first:after], nexts, strict=True))
    countries += chain.from_iterable(zip(codes[first:after], repeat(0)))


def _ordered(ranges: Family) -> tuple[list[int], list[int], list[int]]:
    """The ranges by start (ranges with one start are ordered where they are swept)."""
    starts, ends, codes = ranges.starts, ranges.ends, ranges.codes
    if all(map(ge, islice(starts, 1, None), starts)):
        return starts, ends, codes  # as the files come
    order = sorted(range(len(starts)), key=starts.__getitem__)
    return [starts[i] for i in order], [ends[i] for i in order], [codes[i] for i in order]


def _sweep(
    starts: list[int],
    ends: list[int],
    codes: list[int],
    first: int,
    positions: list[int],
    countries: list[int],
) -> int:
    """Boundaries of the group of overlapping ranges from index `first`, appended; the index
    after the group. The innermost range open at an address gives its country: of ranges
    with one start the shorter, else the one that started last."""
    reach = ends[first]  # the last address of the group so far
    after = first + 1
    while after < len(starts) and starts[after] <= reach:
        reach = max(reach, ends[after])
        after += 1
    group = sorted(range(first, after), key=lambda i: (starts[i], -ends[i]))  # stable
    stack: list[tuple[int, int]] = []  # (end, code) of the ranges open at `pos`, innermost last
    pos = starts[first]

    def fill(limit: int) -> None:
        nonlocal pos
        while pos <= limit:
            while stack and stack[-1][0] < pos:
                stack.pop()
            end, code = stack[-1] if stack else (limit, 0)
            positions.append(pos)
            countries.append(code)
            pos = min(end, limit) + 1

    for index in group:
        if starts[index] > pos:
            fill(starts[index] - 1)
        stack.append((ends[index], codes[index]))
    fill(reach)
    positions.append(reach + 1)  # after the group: ""
    countries.append(0)
    return after


def cut(table: Segments, low: int, high: int, top: int) -> None:
    """Make [low, high] unknown ("") in `table`."""
    starts, codes = table.starts, table.codes
    if high < top:
        after = codes[bisect_right(starts, high + 1) - 1]
        a, b = bisect_left(starts, low), bisect_right(starts, high + 1)
        starts[a:b], codes[a:b] = [low, high + 1], [0, after]
    else:
        a = bisect_left(starts, low)
        starts[a:], codes[a:] = [low], [0]


def merged(table: Segments) -> Segments:
    """The table without a segment that continues its neighbour's country."""
    codes = table.codes
    new = list(chain((True,), map(ne, islice(codes, 1, None), codes)))
    return Segments(list(compress(table.starts, new)), list(compress(codes, new)))
