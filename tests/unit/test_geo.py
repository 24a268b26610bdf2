"""The country lookup (collector/geo.py) on the pinned data set that `make install` puts in the
environment (deploy/geo/fetch.sh): literal addresses and the country the data gives them."""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import logging
import random
import re
from pathlib import Path

import pytest

from collector import geo
from collector.address_table import CachedLookup
from collector.geo import DEFAULT_DIR, CountryTable
from collector.geo_data import NOT_GLOBAL_V4, NOT_GLOBAL_V6, data_files
from collector.sinks.memory import MemorySink
from contract.geo import ATTRIBUTION

V4_FILE = DEFAULT_DIR / "geo-whois-asn-country-ipv4-num.csv"
V6_FILE = DEFAULT_DIR / "geo-whois-asn-country-ipv6-num.csv"


@pytest.fixture(scope="module")
def table() -> CountryTable:
    if not V4_FILE.is_file():
        pytest.fail(f"no country data in {DEFAULT_DIR}: `make install` fetches it (needs npm)")
    return CountryTable.from_files(data_files([DEFAULT_DIR]))


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("8.8.8.8", "US"),
        ("81.2.69.142", "GB"),
        # Range edges: 1.0.0.0-1.0.0.255 AU, then 1.0.1.0-1.0.3.255 CN.
        ("1.0.0.0", "AU"),
        ("1.0.0.255", "AU"),
        ("1.0.1.0", "CN"),
        ("1.0.3.255", "CN"),
        ("1.0.4.0", "AU"),
        # The last range of the IPv4 file ends at 223.255.255.255; 224/4 is multicast.
        ("223.255.255.255", "AU"),
        ("224.0.0.1", ""),
        # A gap in the data: 23.129.176.255 PR | 23.129.177.0-23.129.179.255 none | .180.0 US.
        ("23.129.176.255", "PR"),
        ("23.129.177.0", ""),
        ("23.129.179.255", ""),
        ("23.129.180.0", "US"),
        # Nested ranges: 2.58.196.0-2.58.197.255 DE holds 2.58.197.15 BE.
        ("2.58.197.14", "DE"),
        ("2.58.197.15", "BE"),
        ("2.58.197.16", "DE"),
        ("2001:4860:4860::8888", "US"),
        ("2a03:2880:f12f:83:face:b00c:0:25de", "IE"),
        ("2606:4700:4700::1111", "US"),
        # IPv6 edges inside one /64 (2001:418:1439::/64): ...:29f US, ...:2a0 CA, ...:2a1 US.
        ("2001:418:1439::29f", "US"),
        ("2001:418:1439::2a0", "CA"),
        ("2001:418:1439::2a1", "US"),
        # IPv6 range edges: 2001:218:2000:52::/64 JP between two AU ranges.
        ("2001:218:2000:51:ffff:ffff:ffff:ffff", "AU"),
        ("2001:218:2000:52::", "JP"),
        ("2001:218:2000:52:ffff:ffff:ffff:ffff", "JP"),
        ("2001:218:2000:53::", "AU"),
        # A gap: 2001:678:dc0::/48 AT | 2001:678:dc1:: to dc3 none | 2001:678:dc4:: DK.
        ("2001:678:dc0:ffff:ffff:ffff:ffff:ffff", "AT"),
        ("2001:678:dc1::", ""),
        ("2001:678:dc4::", "DK"),
        # The last range of the IPv6 file, and past it.
        ("2c0f:e9a0:1002:ffff:ffff:ffff:ffff:ffff", "ZA"),
        ("2c0f:e9a0:1003::", ""),
        # A dual-stack socket's IPv4 client.
        ("::ffff:8.8.8.8", "US"),
        ("::ffff:1.0.1.0", "CN"),
    ],
)
def test_addresses_get_the_country_of_the_pinned_data(
    table: CountryTable, ip: str, country: str
) -> None:
    assert table.country(ip) == country


@pytest.mark.parametrize(
    "ip",
    [
        # Private, loopback, shared, link-local, documentation: the data gives some of them a
        # country (192.168.0.0/16 and 172.16.0.0/12 AU, 2001:db8::/32 JP); none is a client's.
        "10.0.0.1", "127.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1",
        "169.254.1.1", "192.0.2.1", "198.51.100.7", "203.0.113.7", "0.0.0.0",
        "255.255.255.255", "240.0.0.1",
        "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
        "2001:2::1", "2002:808:808::1", "::ffff:10.0.0.1", "::ffff:192.168.1.1",
    ],
)  # fmt: skip
def test_private_loopback_and_special_addresses_have_no_country(
    table: CountryTable, ip: str
) -> None:
    assert table.country(ip) == ""


@pytest.mark.parametrize(
    "text",
    ["", "junk", "8.8.8", "8.8.8.8.8", "256.1.1.1", "8.8.8.8 ", " 8.8.8.8", "08.8.8.8",
     "fe80::1%eth0", "2001:4860::8888::1", "8.8.8.8\x00", "::ffff:8.8.8", "1" * 200],
)  # fmt: skip
def test_malformed_addresses_have_no_country_and_raise_nothing(
    table: CountryTable, text: str
) -> None:
    assert table.country(text) == ""


def reference(path: Path, not_global: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """A country function written the slow way from the file's lines: of the ranges that hold
    an address, the one that starts last, of those the shortest, of those the later line."""
    rows = sorted(
        (int(a), int(b), c, n)
        for n, (a, b, c) in enumerate(ln.split(",") for ln in path.read_text().split())
    )
    starts = [r[0] for r in rows]
    reach = list(itertools.accumulate((r[1] for r in rows), max))
    networks = map(ipaddress.ip_network, not_global)
    cut = [(int(n.network_address), int(n.broadcast_address)) for n in networks]

    def country(x: int) -> str:
        if any(a <= x <= b for a, b in cut):
            return ""
        i = bisect.bisect_right(starts, x) - 1
        best: tuple[tuple[int, int, int], str] | None = None
        while i >= 0 and reach[i] >= x:
            start, end, code, line = rows[i]
            if end >= x and (best is None or (start, -end, line) > best[0]):
                best = ((start, -end, line), code)
            i -= 1
        return best[1] if best else ""

    return rows, country


@pytest.mark.parametrize(
    ("path", "not_global", "top", "text"),
    [
        (V4_FILE, NOT_GLOBAL_V4, 2**32 - 1, lambda x: str(ipaddress.IPv4Address(x))),
        (V6_FILE, NOT_GLOBAL_V6, 2**128 - 1, lambda x: str(ipaddress.IPv6Address(x))),
    ],
)
def test_the_table_answers_as_the_ranges_read_the_slow_way(
    table: CountryTable, path, not_global, top, text
) -> None:  # type: ignore[no-untyped-def]
    rows, country = reference(path, not_global)
    rng = random.Random(18)
    points = {rng.randint(0, top) for _ in range(3000)}
    for i, (start, end, _, _) in enumerate(rows):
        # Every edge of every range that overlaps the next (the data has hundreds), a sample
        # of the others, and the edges of each network cut out.
        if (i + 1 < len(rows) and end >= rows[i + 1][0]) or rng.random() < 0.01:
            points |= {start - 1, start, (start + end) // 2, end, end + 1}
    for network in map(ipaddress.ip_network, not_global):
        low, high = int(network.network_address), int(network.broadcast_address)
        points |= {low - 1, low, high, high + 1}
    wrong = [
        (text(x), table.country(text(x)), country(x))
        for x in sorted(p for p in points if 0 <= p <= top)
        if table.country(text(x)) != country(x)
    ]
    # IPv4-mapped addresses are looked up as IPv4, the reference does not know them.
    wrong = [w for w in wrong if not w[0].startswith("::ffff:")]
    assert wrong == []


def test_the_cache_holds_at_most_its_bound_and_answers_alike(table: CountryTable) -> None:
    lookup = CachedLookup(table, max_entries=8)
    addresses = [f"81.2.69.{i}" for i in range(40)] + ["2001:4860:4860::8888", "10.0.0.1"]
    for ip in addresses * 3:
        assert lookup(ip) == table.country(ip)
        assert lookup.cached <= 8
    assert lookup("81.2.69.1") == "GB" and lookup.cached <= 8


def test_a_repeated_address_is_answered_from_the_cache(table: CountryTable) -> None:
    asked: list[str] = []

    class Counting(CountryTable):
        def find(self, ip: str) -> str:
            asked.append(ip)
            return super().find(ip)

    counting = Counting(**{f: getattr(table, f) for f in table.__dataclass_fields__})
    lookup = CachedLookup(counting, max_entries=4)
    for _ in range(5):
        assert lookup("8.8.8.8") == "US"
    assert asked == ["8.8.8.8"]
    for i in range(3):  # the young half (2 entries) fills and becomes the old one
        lookup(f"1.0.1.{i}")
    assert lookup("1.0.1.1") == "CN" and asked.count("1.0.1.1") == 1


def test_off_is_no_lookup_and_every_country_empty() -> None:
    lookup = geo.load_countries("off")
    assert lookup.table is None
    assert lookup("8.8.8.8") == ""


def test_a_missing_file_is_one_log_line_and_empty_countries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such.csv"
    with caplog.at_level(logging.WARNING, "beacon.collector"):
        first = geo.load_countries(str(missing))
        again = geo.load_countries(str(missing))  # a second app in this process
    assert first("8.8.8.8") == again("8.8.8.8") == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(missing) in lines[0] and "country" in lines[0]


def test_an_unreadable_file_is_one_log_line_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    binary = tmp_path / "countries.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, "beacon.collector"):
        assert geo.load_countries(str(binary))("8.8.8.8") == ""
        assert geo.load_countries(str(empty))("8.8.8.8") == ""
    assert len(caplog.records) == 2


# Client addresses, the country the pinned data gives them and the network class iporigin's
# table does (tests/unit/test_networks.py asserts what `iporigin.classify` says of each).
CLIENTS = [
    ("81.2.69.142", "GB", None),
    # BE, its /24 (2.58.197.0, what truncation keeps) DE: looked up before truncation.
    ("2.58.197.15", "BE", None),
    ("2a03:2880:f12f:83:face:b00c:0:25de", "IE", "crawler"),  # Meta's crawler
    ("10.1.2.3", "", None),
    ("52.95.110.1", "US", "data_center"),  # Amazon AWS
    ("::ffff:52.95.110.1", "US", "data_center"),  # a dual-stack socket's IPv4 client
    ("66.249.66.1", "US", "crawler"),  # Googlebot
]


@pytest.mark.parametrize("ip_mode", ["truncate", "full", "drop"])
async def test_the_collector_looks_up_the_whole_address_in_every_ip_mode(
    make_client, ip_mode: str
) -> None:  # type: ignore[no-untyped-def]
    """Country and network class alike, on the pixel path and POST /e."""
    sink = MemorySink()
    client = await make_client(sink, ip_mode=ip_mode, forwarded_header="X-Forwarded-For")
    for ip, _, _ in CLIENTS:
        await client.get("/p.gif?s=a", headers={"X-Forwarded-For": ip})
    for ip in ("2.58.197.15", "52.95.110.1"):
        await client.post("/e", json={"s": "b"}, headers={"X-Forwarded-For": ip})
    await client.close()
    events = sink.events()
    assert [(e["country"], e.get("network")) for e in events] == [
        *((country, network) for _, country, network in CLIENTS),
        ("BE", None),
        ("US", "data_center"),
    ]
    kept = {"truncate": "52.95.110.0", "full": "52.95.110.1", "drop": ""}[ip_mode]
    assert events[4]["ip"] == events[5]["ip"] == kept


async def test_off_leaves_every_country_empty_and_the_rest_as_it_was(make_client) -> None:  # type: ignore[no-untyped-def]
    sink = MemorySink()
    client = await make_client(sink, geo_db="off", forwarded_header="X-Forwarded-For")
    await client.get("/p.gif?s=a", headers={"X-Forwarded-For": "81.2.69.142"})
    await client.close()
    [event] = sink.events()
    assert (event["country"], event["ip"]) == ("", "81.2.69.0")


async def test_a_missing_file_starts_a_collector_that_answers_and_records(
    make_client, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sink = MemorySink()
    client = await make_client(sink, geo_db=str(tmp_path / "gone.csv"))
    resp = await client.get("/p.gif?s=a")
    assert resp.status == 200
    await client.close()
    assert [e["country"] for e in sink.events()] == [""]


def test_the_privacy_page_credits_the_data_and_names_the_pinned_release() -> None:
    root = Path(__file__).resolve().parents[2]
    privacy = (root / "docs" / "privacy.md").read_text()
    script = (root / "deploy" / "geo" / "fetch.sh").read_text()
    [version] = re.findall(r"^VERSION=(\S+)$", script, re.MULTILINE)
    assert ATTRIBUTION in privacy
    assert f"version {version}" in privacy
    assert (DEFAULT_DIR / "PACKAGE").read_text().split()[0].endswith(f"@{version}")


async def test_rows_kept_without_identifiers_keep_the_country(make_client) -> None:  # type: ignore[no-untyped-def]
    sink = MemorySink()
    client = await make_client(
        sink,
        consent_required=("shop",),
        consent_missing="aggregate",
        forwarded_header="X-Forwarded-For",
    )
    headers = {"X-Forwarded-For": "81.2.69.142"}
    await client.get("/p.gif?s=shop", headers=headers)  # no consent: an aggregate row
    await client.get("/p.gif?s=blog&e=click", headers={**headers, "DNT": "1"})  # anonymous
    await client.close()
    rows = {e["site"]: e for e in sink.events()}
    assert {site: (e["country"], e["ip"], e["visitor_id"]) for site, e in rows.items()} == {
        "shop": ("GB", "", 0),
        "blog": ("GB", "", 0),
    }
