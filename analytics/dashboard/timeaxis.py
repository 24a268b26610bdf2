"""The time axis under a chart: which periods get a label, so that labels never overlap.

Hours are labelled every Nth clock hour (N of 1, 2, 3, 4, 6, 12, 24: each divides a day, so
every midnight is a label) and each midnight shows its date in bold over a dashed line; over
many days only some midnights are labelled. Days are labelled every Nth day, the last one
(today) always.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# In the chart's own units (the font is 11 of them): the widest label, "Jan 02" in bold, is
# under 6 x 7; GAP_PX keeps neighbours apart.
CHAR_PX = 7
LABEL_CHARS = 6
GAP_PX = 10
SPACING_PX = LABEL_CHARS * CHAR_PX + GAP_PX
HOUR_STEPS = (1, 2, 3, 4, 6, 12, 24)
DAY_STEPS = (1, 2, 3, 7, 14, 28, 56, 91, 182, 364)


@dataclass(frozen=True)
class Tick:
    """A labelled period: its index, its text, whether it starts a day (bold), with a line."""

    index: int
    text: str
    boundary: bool = False
    line: bool = False


def day_text(day: dt.date) -> str:
    return f"{MONTHS[day.month - 1]} {day.day:02d}"


def smallest(steps: Sequence[int], unit_px: float) -> int | None:
    """The smallest step whose labels sit SPACING_PX apart or more; None when none does."""
    return next((s for s in steps if s * unit_px >= SPACING_PX), None)


def hour_ticks(labels: Sequence[str], slot_px: float) -> list[Tick]:
    """Labels 'YYYY-MM-DD HH:00': every Nth clock hour, midnights as dates."""
    at = [dt.datetime.strptime(label, "%Y-%m-%d %H:%M") for label in labels]
    step = smallest(HOUR_STEPS, slot_px)
    if step is not None:
        return [
            Tick(i, day_text(t.date()), True, True) if t.hour == 0 else Tick(i, f"{t.hour:02d}:00")
            for i, t in enumerate(at)
            if t.hour % step == 0
        ]
    every = smallest(DAY_STEPS, 24 * slot_px) or DAY_STEPS[-1]
    return [
        Tick(i, day_text(t.date()), True, True)
        for i, t in enumerate(at)
        if t.hour == 0 and t.date().toordinal() % every == 0
    ]


def day_ticks(labels: Sequence[str], slot_px: float) -> list[Tick]:
    """Labels 'YYYY-MM-DD': every Nth day, counted back from the last."""
    every = smallest(DAY_STEPS, slot_px) or DAY_STEPS[-1]
    last = len(labels) - 1
    return [
        Tick(i, day_text(dt.date.fromisoformat(label)))
        for i, label in enumerate(labels)
        if (last - i) % every == 0
    ]


def ticks(labels: Sequence[str], slot_px: float) -> list[Tick]:
    """The labelled periods of `labels` (hours or days) `slot_px` apart."""
    if not labels:
        return []
    return hour_ticks(labels, slot_px) if " " in labels[0] else day_ticks(labels, slot_px)
