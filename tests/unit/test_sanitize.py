"""Control characters never reach a stored field: unit checks and through the collector."""

from __future__ import annotations

import orjson
import pytest

from collector.sanitize import CONTROL_RE, clean, may_hold_controls, scrub_event
from collector.sinks.memory import MemorySink
from tests.support.helpers import metric_value

# Every C0 control, DEL, every C1 control, and the Unicode line/paragraph separators.
CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)]


async def stored(client, sink: MemorySink) -> list[dict]:
    await client.close()
    return sink.events()


def strings_of(row: dict) -> list[str]:
    out = [v for v in row.values() if isinstance(v, str)]
    for key, value in row.get("props", {}).items():
        out += [key, value]
    return out


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_every_control_is_caught_by_the_cheap_test_and_removed(char: str) -> None:
    row = {"site": f"a{char}b", "props": {"k": "v"}, "visitor_id": 1}
    assert may_hold_controls(orjson.dumps(row))
    notes: list[str] = []
    assert scrub_event(row, notes)
    assert row["site"] == "ab" and notes == ["control_chars"]


def test_clean_rows_pass_the_cheap_test_and_stay_untouched() -> None:
    row = {"site": "blog", "url_path": "/a/b", "props": {"k": "v w"}, "visitor_id": 7}
    assert not may_hold_controls(orjson.dumps(row))
    unicode_row = {"site": "café ", "props": {}}  # non-ASCII, no-break space: no control
    assert may_hold_controls(orjson.dumps(unicode_row))  # the slow path looks, and finds none
    notes: list[str] = []
    assert not scrub_event(unicode_row, notes)
    assert unicode_row["site"] == "café " and notes == []


def test_props_keys_and_values_are_cleaned_and_an_all_control_key_dropped() -> None:
    row = {"props": {"a\nb": "c\r\nd", "\x00": "gone", "ok": "fine"}}
    notes: list[str] = []
    scrub_event(row, notes)
    assert row["props"] == {"ab": "cd", "ok": "fine"}
    assert clean("x\u2028y\x85z") == "xyz"


async def test_pixel_with_crlf_everywhere_stores_none(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    evil = "\r\nSet-Cookie: x=1\x00\x1b[31m\x7f\x85\u2028"
    query = {
        "e": "open", "s": f"shop{evil}", "c": f"c{evil}", "m": f"m{evil}", "r": f"alice{evil}",
        "ad": f"ad{evil}", "u": f"https://shop.example/p{evil}?utm_source=x{evil}",
        "ref": f"https://ref.example/{evil}", f"p.key{evil}": f"value{evil}",
    }  # fmt: skip
    resp = await client.get("/p.gif", params=query, headers={"User-Agent": "UA\tone"})
    assert resp.status == 200
    assert "x=1" not in resp.headers.get("Set-Cookie", "")
    [row] = await stored(client, sink)
    for text in strings_of(row):
        assert not CONTROL_RE.search(text), (text, row)
    assert row["recipient"] == "aliceSet-Cookie: x=1[31m"  # removed, not replaced
    assert row["user_agent"] == "UAone"
    assert metric_value(metrics, "beacon_input_fixed_total", reason="control_chars") == 1


async def test_posted_events_are_cleaned_too(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    events = [
        {"e": "custom", "s": "blog\n", "r": "bob\r\n", "p": {"name\n": "x\u2028y", "n": 3}},
        {"e": "custom", "s": "blog", "r": "bob"},
    ]
    resp = await client.post(
        "/e", data=orjson.dumps(events), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 204
    first, second = await stored(client, sink)
    assert (first["site"], first["recipient"], first["props"]) == (
        "blog",
        "bob",
        {"name": "xy", "n": "3"},
    )
    assert second["recipient"] == "bob"
    assert metric_value(metrics, "beacon_input_fixed_total", reason="control_chars") == 1
