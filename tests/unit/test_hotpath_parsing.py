"""The hot path's hand-written parsers agree with the standard library they replace."""

from __future__ import annotations

import ipaddress
import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import event as ev
from collector.privacy import anonymise_ip, ipv4_text, normalise_ip
from tests.support.helpers import reference_split

IP_CORPUS = [
    "0.0.0.0",
    "1.2.3.4",
    "10.0.0.1",
    "192.0.2.255",
    "255.255.255.255",
    "203.0.113.7",
    "256.1.1.1",
    "1.2.3.256",
    "1.2.3.300",
    "1.2.3.999",
    "1.2.3.199",
    "1.2.3.250",
    "01.2.3.4",
    "1.2.3.00",
    "1.2.3.04",
    "1.2.3",
    "1.2.3.4.5",
    "1.2.3.",
    ".1.2.3",
    "1..2.3",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1.2.3.-4",
    "1.2.3.+4",
    "1.2.3.0x4",
    "1.2.3.1234",
    "1.2.3.٣",  # an Arabic-Indic digit: str.isdigit() says yes, ipaddress says no
    "1.2.3.²",
    "",
    "not an ip",
    "::1",
    "::",
    "2001:db8::1",
    "2001:DB8:0:0:1::1",
    "2001:db8:1:2:3:4:5:6",
    "::ffff:192.0.2.9",
    "::ffff:c000:209",
    "fe80::1%eth0",
    "2001:db8::g",
    "1.2.3.4/24",
    # IPv6 forms the C parser and printer must read and write as ipaddress does
    "::1.2.3.4",  # IPv4-compatible: the C printer writes a dotted tail
    "::ffff:0:0",
    "::ffff:1.2.3.04",
    "::ffff:01.2.3.4",
    "1:2:3:4:5:6:1.2.3.4",
    "1:0:0:2:0:0:0:3",  # two zero runs: the longer one is compressed
    "1:0:0:2:0:0:3:4",  # two as long: the first one
    "1:0:2:3:4:5:6:7",  # one zero group is not compressed
    "0:0:0:0:0:0:0:1",
    "2001:0DB8:0000:0000:0000:0000:0000:0001",
    "2001:db8:abcd:12::",
    "0:0:1::",
    "::0:1:2:3",
    "2001:db8::00001",
    "2001:db8:::1",
    ":2001:db8::1",
    "2001:db8::1:",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7::",
    "::1:2:3:4:5:6:7",
    "2001:db8::1\x00",
    "2001:db8::1 ",
    "[2001:db8::1]",
    "fe80::1%",
    "٢001:db8::1",
]


def reference_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`ipaddress.ip_address`, without an IPv6 zone id (no row keeps one); raises ValueError."""
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        return ipaddress.IPv6Address(int(addr))
    return addr


def reference_anonymise(ip: str, mode: str) -> str:
    """The `ipaddress`-only implementation the fast path replaced."""
    if mode == "drop" or not ip:
        return ""
    try:
        addr = reference_address(ip)
    except ValueError:
        return ""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if mode == "full":
        return str(addr)
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


def reference_normalise(text: str) -> str:
    try:
        return str(reference_address(text))
    except ValueError:
        return ""


def every_ipv4_octet() -> list[str]:
    texts = [f"192.0.2.{i}" for i in range(256)]
    texts += [f"192.0.2.{i:03d}" for i in range(100)]  # leading zeros: refused
    texts += [f"{i}.{i}.{i}.{i}" for i in range(250, 1000, 7)]
    return texts


@pytest.mark.parametrize("mode", ["truncate", "full", "drop"])
def test_anonymise_ip_equals_ipaddress(mode: str) -> None:
    for ip in IP_CORPUS + every_ipv4_octet():
        assert anonymise_ip(ip, mode) == reference_anonymise(ip, mode), (ip, mode)


def test_normalise_ip_equals_ipaddress() -> None:
    for ip in IP_CORPUS + every_ipv4_octet():
        assert normalise_ip(ip) == reference_normalise(ip), ip
        canonical_v4 = reference_normalise(ip) == ip != "" and "." in ip and ":" not in ip
        assert ipv4_text(ip) == canonical_v4, ip


def ipv6_text(value: int, form: int) -> str:
    addr = ipaddress.IPv6Address(value)
    if form == 0:
        return addr.compressed
    if form == 1:
        return addr.exploded.upper()
    if form == 2:  # each group without its leading zeros, nothing compressed
        return ":".join(f"{int(g, 16):x}" for g in addr.exploded.split(":"))
    return addr.exploded[:30] + str(ipaddress.IPv4Address(value & 0xFFFF_FFFF))  # dotted tail


# Groups drawn so that zero runs, the mapped and compatible prefixes and small values are
# common, not one in 2**128.
group = st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xDB8, 0x2001]) | st.integers(0, 0xFFFF)
ipv6_value = st.lists(group, min_size=8, max_size=8).map(
    lambda gs: int.from_bytes(b"".join(g.to_bytes(2, "big") for g in gs), "big")
)
mutation = st.tuples(st.integers(0, 45), st.sampled_from(["", ":", "0", "f", ".", "%", "::"]))


@settings(max_examples=400, deadline=None)
@given(ipv6_value, st.integers(0, 3), st.lists(mutation, max_size=2))
def test_ipv6_fast_forms_equal_ipaddress(value: int, form: int, mutations: list) -> None:
    text = ipv6_text(value, form)
    for at, insert in mutations:  # also near misses: the two parsers must refuse alike
        text = text[:at] + insert + text[at + 1 :]
    assert normalise_ip(text) == reference_normalise(text), text
    for mode in ("truncate", "full"):
        assert anonymise_ip(text, mode) == reference_anonymise(text, mode), (text, mode)


URL_CORPUS = [
    "",
    "https://mail.example.com/",
    "https://Shop.Example.COM/Spring/Sale?utm_source=mail&x=1#top",
    "http://example.com",
    "http://example.com?utm_medium=cpc",
    "http://example.com#frag?not=query",
    "https://example.com/a/b?c=d?e=f#g#h",
    "https://user:pw@example.com:8443/p?utm_campaign=x%20y&keep=1&drop=2",
    "https://user@Example.com/",
    "https://example.com:notaport/path",
    "https://example.com/path with space?utm_term=a b",
    "https://example.com/path ",
    "https://example.com/\tpath\n?utm_source=x",
    " https://example.com/",
    "https://[2001:db8::1]:8080/p?utm_source=v6",
    "https://[2001:db8::1/p",
    "https://example.com]/p",
    "https://bücher.example/p?utm_source=x",
    "https://ex\uff0eample.com/",
    "HTTPS://EXAMPLE.COM/Path?utm_source=UP",
    "ftp://example.com/file",
    "/relative/path?utm_source=r",
    "example.com/no-scheme",
    "https:///no-host?utm_source=x",
    "https://",
    "https://example.com/?utm_source=&utm_medium",
    "https://example.com/?utm%5Fsource=encoded&keep=%41",
    "https://example.com/?a=1&&b=2;utm_x=3",
    "https://example.com/?a=b=c&=x&utm_x&utm_y=&&utm_z=1=2",
    "https://example.com/?utm_source=a+b&utm_term=c%2Bd",
    "https://example.com/?utm_source=mail/2026:spring,%E2%9C%93&utm_content=ü",
    "https://example.com/?keep=1&keep=2&utm_source=x;y",
    "javascript:alert(1)",
    "https://example.com/\x7f",
    "https://example.com/%0d%0a?utm_source=%0d",
]


def test_split_url_equals_urlsplit() -> None:
    keep = frozenset({"keep"})
    for url in URL_CORPUS:
        assert ev.split_url(url, keep) == reference_split(url, keep), url


def test_split_http_url_takes_the_common_urls_and_leaves_the_rest() -> None:
    assert ev.split_http_url("https://A.example/p?q=1#f") == ("a.example", "/p", "q=1")
    assert ev.split_http_url("https://[::1]/") is None
    assert ev.split_http_url("https://example.com/\tp") is None
    assert ev.split_http_url("/relative") is None
    assert ev.split_http_url("https://bücher.example/") is None


UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_uuid7_source_makes_valid_distinct_ids_with_the_time() -> None:
    source = ev.Uuid7Source()
    now = ev.now_ms()
    ids = [source(now + i // 100) for i in range(5_000)]  # crosses pool refills
    assert len(set(ids)) == len(ids)
    for i, text in enumerate(ids):
        assert UUID7_RE.match(text), text
        parsed = uuid.UUID(text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert parsed.int >> 80 == now + i // 100
        assert ev.CLICK_ID_RE.match(text)  # a click id the conversion pixel accepts
    variants = {text[19] for text in ids}
    assert variants == set("89ab")  # both variant-nibble random bits vary


def test_uuid7_source_keeps_ids_48_bit_ms() -> None:
    big = (1 << 48) + 5
    assert uuid.UUID(ev.Uuid7Source()(big)).int >> 80 == 5
    assert uuid.UUID(ev.uuid7(big)).int >> 80 == 5
