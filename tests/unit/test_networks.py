"""The network lookup (collector/networks.py) on the range table of the pinned iporigin
package: its answers beside `iporigin.classify` for every range the package ships, known
addresses, the setting's `off` and another file, and a file it cannot read. Through the
collector in every IP mode: tests/unit/test_geo.py, with the countries."""

from __future__ import annotations

import ipaddress
import logging
import struct
from pathlib import Path

import iporigin
import pytest

from collector import networks
from collector.address_table import AddressTable, CachedLookup
from collector.geo_data import NOT_GLOBAL_V4, NOT_GLOBAL_V6
from collector.networks import CLASS_OF_KIND, bundled_file, load_networks, read_table
from collector.sinks.memory import MemorySink

# What iporigin.classify says of these, asserted below so each line says why.
AWS = "52.95.110.1"  # hosting: Amazon AWS (iporigin's own README example)
GOOGLEBOT = "66.249.66.1"  # bot: Googlebot
HOME = "81.2.69.142"  # unknown: in no list (a residential ISP's)


@pytest.fixture(scope="module")
def table() -> AddressTable:
    return read_table(bundled_file().read_bytes())[0]


def expected(ip: str) -> str:
    """The class Beacon gives what iporigin.classify says of `ip`."""
    return CLASS_OF_KIND.get(iporigin.classify(ip).kind, "")


@pytest.mark.parametrize(
    ("ip", "kind", "network"),
    [
        (AWS, "hosting", "data_center"),
        ("8.8.8.8", "hosting", "data_center"),  # Google
        ("2001:4860:4860::8888", "hosting", "data_center"),
        ("1.37.77.98", "cdn", "data_center"),  # Gcore
        (GOOGLEBOT, "bot", "crawler"),
        ("3.41.188.32", "bot", "crawler"),  # Common Crawl
        ("2a03:2880:f12f:83:face:b00c:0:25de", "bot", "crawler"),  # Meta's crawler
        ("2.58.241.66", "vpn", ""),  # ProtonVPN: a person behind it
        ("2001:ac8:a:f::f001", "vpn", ""),  # Mullvad
        ("2.26.97.42", "tor", ""),
        (HOME, "unknown", ""),
        ("10.0.0.1", "reserved", ""),
        ("127.0.0.1", "reserved", ""),
        ("::1", "reserved", ""),
    ],
)
def test_known_addresses_get_the_class_of_their_kind(
    table: AddressTable, ip: str, kind: str, network: str
) -> None:
    assert iporigin.classify(ip).kind == kind
    assert table.find(ip) == network


def test_an_ipv4_mapped_address_is_its_ipv4_one(table: AddressTable) -> None:
    assert table.find(f"::ffff:{AWS}") == "data_center"
    assert table.find(f"::ffff:{GOOGLEBOT}") == "crawler"
    assert table.find(f"::ffff:{HOME}") == ""


def test_the_special_purpose_blocks_are_no_data_center_whatever_a_feed_says(
    table: AddressTable,
) -> None:
    """Vultr's feed lists all of 6to4 (2002::/16), which iporigin keeps: such an address is
    an IPv4 client's tunnel, and Beacon's special-purpose blocks are "" in every table, as
    for countries (collector/geo_data.py NOT_GLOBAL_V6)."""
    six_to_four = "2002:c000:204::1"
    assert iporigin.classify(six_to_four).provider == "Vultr"
    assert table.find(six_to_four) == ""


@pytest.mark.parametrize("text", ["", "junk", "52.95.110", "fe80::1%eth0", "52.95.110.1 "])
def test_malformed_addresses_have_no_network_and_raise_nothing(
    table: AddressTable, text: str
) -> None:
    assert table.find(text) == ""


def test_every_range_the_package_ships_answers_as_iporigin_classify(table: AddressTable) -> None:
    """The file read here and by iporigin's own loader (private: read only in this test, so a
    release that changes the format or what it means fails here), answered by its public
    `classify`: every range's first and last address and the addresses just outside."""
    from iporigin._data import dataset  # the ranges as the package itself reads them

    data = dataset()
    assert len(data) == iporigin.dataset_info()["ranges"] > 30_000
    points: set[str] = set()
    for starts, ends, make in (
        (data.v4_starts, data.v4_ends, ipaddress.IPv4Address),
        (data.v6_starts, data.v6_ends, ipaddress.IPv6Address),
    ):
        top = 2 ** (32 if make is ipaddress.IPv4Address else 128) - 1
        for start, end in zip(starts, ends, strict=True):
            points |= {str(make(x)) for x in (start - 1, start, end, end + 1) if 0 <= x <= top}
    special = [ipaddress.ip_network(n) for n in (*NOT_GLOBAL_V4, *NOT_GLOBAL_V6)]
    wrong = [
        (ip, table.find(ip), expected(ip))
        for ip in points
        if table.find(ip) != expected(ip)
        and not any(ipaddress.ip_address(ip) in network for network in special)
    ]
    assert wrong == []
    flagged = sum(table.find(ip) != "" for ip in points)
    assert flagged > len(points) // 3  # most ranges are flagged ones: the comparison has teeth


def pack(labels: list[str], v4: list[tuple[str, str, int]], built_at: int = 1_791_200_061) -> bytes:
    """A range table in iporigin's format 1 (IPv4 ranges only), as its build tool writes it."""
    out = [struct.pack("<8sHQHII", b"IPORIGIN", 1, built_at, len(labels), len(v4), 0)]
    for label in labels:
        out.append(struct.pack("<H", len(label.encode())) + label.encode())
    for start, end, index in v4:
        first, last = (int(ipaddress.IPv4Address(x)) for x in (start, end))
        out.append(struct.pack("<IIH", first, last, index))
    return b"".join(out)


def test_another_file_of_the_format_is_read_and_the_inner_range_holds(tmp_path: Path) -> None:
    path = tmp_path / "ranges.bin"
    labels = ["Cloud\thosting", "Relay\tvpn", "Crawler\tbot", "Edge\tcdn", "New\tsomething"]
    path.write_bytes(
        pack(
            labels,
            [
                ("81.2.0.0", "81.2.255.255", 0),
                ("81.2.69.0", "81.2.69.255", 1),  # a VPN block inside a cloud's: not flagged
                ("81.3.0.0", "81.3.0.255", 2),
                ("81.3.1.0", "81.3.1.255", 3),
                ("81.3.2.0", "81.3.2.255", 4),  # a kind this collector does not know
            ],
        )
    )
    lookup = load_networks(str(path))
    answers = [
        lookup(ip)
        for ip in ("81.2.0.1", HOME, "81.2.70.1", "81.3.0.9", "81.3.1.9", "81.3.2.9", AWS)
    ]
    assert answers == ["data_center", "", "data_center", "crawler", "data_center", "", ""]


def test_off_is_no_lookup() -> None:
    lookup = load_networks("off")
    assert lookup.table is None and lookup(AWS) == ""


def truncated() -> bytes:
    return pack(["Cloud\thosting"], [("81.2.0.0", "81.2.255.255", 0)])[:-3]


@pytest.mark.parametrize(
    ("blob", "says"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "not an iporigin range table"),
        (b"IPORIGIN", "not an iporigin range table"),
        (pack([], []).replace(b"\x01\x00", b"\x02\x00", 1), "iporigin format 2"),
        (truncated(), "its size is not what its header says"),
        (pack(["Cloud\thosting"], [("81.2.0.0", "81.2.255.255", 3)]), "label is not in the file"),
        (pack(["Cloud\thosting"], [("81.2.9.0", "81.2.0.255", 0)]), "ends before it starts"),
        (pack(["Relay\tvpn"], []), "no address range in it"),
    ],
    ids=["png", "header-only", "format-2", "truncated", "no-label", "backwards", "empty"],
)
def test_a_file_it_cannot_read_is_one_log_line_and_no_network(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, blob: bytes, says: str
) -> None:
    path = tmp_path / "ranges.bin"
    path.write_bytes(blob)
    with caplog.at_level(logging.WARNING, "beacon.collector"):
        first = load_networks(str(path))
        again = load_networks(str(path))  # a second app in this process: read once
    assert first(AWS) == again(AWS) == ""
    [line] = [r.getMessage() for r in caplog.records]
    assert "no network data" in line and says in line


def test_a_missing_package_is_one_log_line_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(networks, "PACKAGE", "no_such_package_here")
    monkeypatch.setattr(networks, "_loaded", {})
    with caplog.at_level(logging.WARNING, "beacon.collector"):
        assert load_networks("")(AWS) == ""
    [line] = [r.getMessage() for r in caplog.records]
    assert "no_such_package_here package is not installed" in line


def test_the_bundled_table_is_read_once_per_process() -> None:
    assert load_networks("").table is load_networks(" ").table is not None
    assert isinstance(load_networks(""), CachedLookup)


async def test_off_leaves_the_field_out_and_the_rest_as_it_was(make_client) -> None:  # type: ignore[no-untyped-def]
    sink = MemorySink()
    client = await make_client(sink, network_db="off", forwarded_header="X-Forwarded-For")
    await client.get("/p.gif?s=a", headers={"X-Forwarded-For": AWS})
    await client.close()
    [event] = sink.events()
    assert "network" not in event and (event["country"], event["ip"]) == ("US", "52.95.110.0")
