"""Known-answer vector for the event on the wire (docs/tracking.md "Event format"): fixed
input, the expected bytes written here. A change to them is a change of the wire format that
consumers, kcat users and ClickHouse's Kafka engine read: it needs a schema_version decision."""

from __future__ import annotations

from collector.event import build_event
from collector.sanitize import serialise

# schema_version 2 with `country` (added within 2: consumers before it ignore the field).
OPEN_V2 = (
    b'{"schema_version":2,"event_id":"019b7736-5c7b-7000-8000-000000000001",'
    b'"received_at":1767225600123,"event_type":"open","site":"shop","campaign":"spring",'
    b'"message":"","recipient":"u-77","ad":"","url_host":"shop.example","url_path":"/a",'
    b'"url_query":"utm_source=mail","referrer":"","props":{"n":"2"},'
    b'"user_agent":"Mozilla/5.0 Test","ip":"81.2.69.0","country":"GB","visitor_id":42,'
    b'"dnt":0,"transport":"pixel","verified":0,"consent":"not_required"}'
)


def test_an_open_pixel_event_is_these_bytes() -> None:
    row = build_event(
        {"e": "open", "s": "shop", "c": "spring", "r": "u-77"},
        {"n": "2"},
        page_url="https://shop.example/a?utm_source=mail&x=1",
        user_agent="Mozilla/5.0 Test",
        ip="81.2.69.0",
        visitor_id=42,
        dnt=False,
        transport="pixel",
        received_ms=1_767_225_600_123,
        keep_query=frozenset(),
        notes=[],
        event_id="019b7736-5c7b-7000-8000-000000000001",
        country="GB",
    )
    row["consent"] = "not_required"  # set by the collector after the row is built
    assert serialise(row, []) == OPEN_V2


# An impression from a data center's address, prerendered: `network` and `purpose` right after
# `country`, only on events that have them (added within 2, as `country` was).
FLAGGED_V2 = (
    b'{"schema_version":2,"event_id":"019b7736-5c7b-7000-8000-000000000002",'
    b'"received_at":1767225600456,"event_type":"impression","site":"news","campaign":"fall",'
    b'"message":"","recipient":"","ad":"banner-3","url_host":"news.example","url_path":"/",'
    b'"url_query":"","referrer":"","props":{},"user_agent":"Mozilla/5.0 Test",'
    b'"ip":"52.95.110.0","country":"US","network":"data_center","purpose":"prerender",'
    b'"visitor_id":7,"dnt":0,"transport":"pixel","verified":1,"consent":"not_required"}'
)


def test_a_flagged_impression_is_these_bytes() -> None:
    row = build_event(
        {"e": "impression", "s": "news", "c": "fall", "ad": "banner-3"},
        {},
        page_url="https://news.example/",
        user_agent="Mozilla/5.0 Test",
        ip="52.95.110.0",
        visitor_id=7,
        dnt=False,
        transport="pixel",
        received_ms=1_767_225_600_456,
        keep_query=frozenset(),
        notes=[],
        verified=True,
        event_id="019b7736-5c7b-7000-8000-000000000002",
        country="US",
        network="data_center",
        purpose="prerender",
    )
    row["consent"] = "not_required"
    assert serialise(row, []) == FLAGGED_V2
