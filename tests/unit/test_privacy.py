"""Privacy building blocks: IP truncation, visitor id rotation, DNT/GPC decisions."""

from __future__ import annotations

import pytest

from collector.privacy import MS_PER_DAY, VisitorHasher, anonymise_ip, dnt_decision, opted_out


@pytest.mark.parametrize(
    ("ip", "mode", "expected"),
    [
        ("192.0.2.255", "truncate", "192.0.2.0"),
        ("2001:db8:1:2:3:4:5:6", "truncate", "2001:db8:1::"),
        ("::ffff:192.0.2.9", "truncate", "192.0.2.0"),
        ("192.0.2.255", "full", "192.0.2.255"),
        ("2001:db8::1", "drop", ""),
        ("not an ip", "truncate", ""),
        ("", "truncate", ""),
    ],
)
def test_anonymise_ip(ip: str, mode: str, expected: str) -> None:
    assert anonymise_ip(ip, mode) == expected


def test_visitor_id_rotates_daily_and_depends_on_every_input() -> None:
    hasher = VisitorHasher(b"secret")
    day = 20_000 * MS_PER_DAY
    base = hasher.visitor_id("site", "192.0.2.1", "UA", day + 5)
    assert base == hasher.visitor_id("site", "192.0.2.1", "UA", day + MS_PER_DAY - 1)
    assert base != hasher.visitor_id("site", "192.0.2.1", "UA", day + MS_PER_DAY)
    assert base != hasher.visitor_id("other", "192.0.2.1", "UA", day)
    assert base != hasher.visitor_id("site", "192.0.2.2", "UA", day)
    assert base != hasher.visitor_id("site", "192.0.2.1", "UA2", day)
    assert base != VisitorHasher(b"other secret").visitor_id("site", "192.0.2.1", "UA", day)
    assert 0 < base < 2**64


def test_opted_out_and_policy() -> None:
    assert opted_out({"DNT": "1"}) and opted_out({"Sec-GPC": "1"})
    assert not opted_out({"DNT": "0"}) and not opted_out({})
    assert dnt_decision("passive", "open") == "drop"
    assert dnt_decision("passive", "click") == "anonymous"
    assert dnt_decision("passive", "conversion") == "anonymous"
    assert dnt_decision("ignore", "open") == "record"
    assert dnt_decision("all", "click") == "drop"
