"""The dashboard's time axis: labels never overlap, and day boundaries are marked."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from analytics.dashboard.svg import Plot
from analytics.dashboard.timeaxis import CHAR_PX, GAP_PX, ticks

START = dt.datetime(2026, 3, 1, 17)


def hours(count: int) -> list[str]:
    return [(START + dt.timedelta(hours=i)).strftime("%Y-%m-%d %H:00") for i in range(count)]


def days(count: int) -> list[str]:
    return [(START.date() + dt.timedelta(days=i)).isoformat() for i in range(count)]


@pytest.mark.parametrize("width_px", [720, 1200])
@pytest.mark.parametrize("labels", [hours(n) for n in (1, 5, 24, 48, 168, 720, 9600)]
                         + [days(n) for n in (1, 7, 30, 90, 400)])  # fmt: skip
def test_labels_never_overlap(labels: list[str], width_px: int) -> None:
    plot = Plot(len(labels), width_px)
    found = ticks(labels, plot.slot_px())
    assert found, "every axis has a label"
    for a, b in itertools.pairwise(found):
        half_widths = (len(a.text) + len(b.text)) * CHAR_PX / 2
        assert plot.x(b.index) - plot.x(a.index) >= half_widths + GAP_PX, (a, b)


def test_hours_are_every_nth_clock_hour_with_midnights_as_dates() -> None:
    labels = hours(48)
    found = ticks(labels, Plot(48, 720).slot_px())
    hours_shown = {int(labels[t.index][11:13]) for t in found}
    step = min(b - a for a, b in zip(sorted(hours_shown), sorted(hours_shown)[1:], strict=False))
    assert 24 % step == 0 and all(h % step == 0 for h in hours_shown)
    midnights = [t for t in found if labels[t.index].endswith(" 00:00")]
    assert [t.text for t in midnights] == ["Mar 02", "Mar 03"]
    assert all(t.boundary and t.line for t in midnights)
    assert all(not t.line and t.text.endswith(":00") for t in found if t not in midnights)


def test_a_day_of_hours_across_the_page_labels_every_other_hour() -> None:
    found = ticks(hours(24), Plot(24, 1200).slot_px())
    assert len(found) == 12 and sum(t.line for t in found) == 1


def test_days_count_back_from_today() -> None:
    labels = days(30)
    found = ticks(labels, Plot(30, 720).slot_px())
    assert found[-1].index == 29 and found[-1].text == "Mar 30"
    assert not any(t.line for t in found)
