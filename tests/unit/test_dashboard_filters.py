"""The dashboard's query string: filters read, refused, and written back as row links."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from analytics.dashboard.filters import Selection, parse_selection
from analytics.report_window import Filters


def parse(query: str) -> Selection:
    pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    return parse_selection(dict(reversed(pairs)), [name for name, _ in pairs])


def test_a_selection_reads_back_what_it_writes() -> None:
    web = (("referrer_host", ""), ("country", "DE"), ("page", "/a b&c=d"))
    s = Selection(7, None, (("site", "blog"),), web)
    href = s.href()
    assert href == "?days=7&site=blog&referrer_host=&country=DE&page=%2Fa%20b%26c%3Dd"
    assert parse(href) == s
    assert parse(href).filters() == Filters(site="blog", web=web)


def test_adding_replaces_the_same_key_and_dropping_keeps_the_rest() -> None:
    s = parse("?days=1&group=day&country=DE&source=search")
    assert s.group == "day" and s.active() == (("source", "search"), ("country", "DE"))
    assert s.href(add=[("country", "FR")]) == "?days=1&group=day&source=search&country=FR"
    assert s.href(drop=("source",)) == "?days=1&group=day&country=DE"
    assert s.without_filters() == "?days=1&group=day"
    # Another range chooses its own grouping; the filters stay.
    assert s.href(days=30) == "?days=30&source=search&country=DE"
    assert parse("?days=2").group == "hour" and parse("?days=3").group == "day"


def test_an_empty_id_is_no_filter_but_an_empty_web_value_is_one() -> None:
    s = parse("?site=&campaign=&country=")
    assert s.ids == () and s.web == (("country", ""),)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("?token=x", "unknown parameter"),
        ("?country=DE&country=FR", "given twice"),
        ("?days=0", "days"),
        ("?days=401", "days"),
        ("?group=week", "group"),
        ("?country=de", "country"),
        ("?device_type=phone", "device_type"),
        ("?source=paid", "source"),
        ("?entry_page=home", "entry_page"),
        ("?os=a%0Ab", "control"),
        ("?utm_campaign=" + "x" * 257, "256"),
    ],
)
def test_what_cannot_be_a_filter_is_refused_with_a_reason(query: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse(query)
