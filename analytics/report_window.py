"""What a report asks for: a time window in whole hours, filters, and a grouping."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from analytics.ivt import DUPLICATE_CLICK_WINDOW_S

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
GROUPS = ("hour", "day")
ID_COLUMNS = frozenset({"site", "campaign", "ad", "verified"})


def sql_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_time(at: dt.datetime) -> str:
    return f"toDateTime('{at.strftime('%Y-%m-%d %H:%M:%S')}', 'UTC')"


def floor_hour(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def parse_time(text: str) -> dt.datetime:
    """An ISO date or date-time (UTC unless it says otherwise), down to the hour."""
    at = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    if at != floor_hour(at):
        raise ValueError(f"{text!r}: reports count whole hours (e.g. 2026-11-29T14:00)")
    return floor_hour(at)


@dataclass(frozen=True)
class Window:
    """[start, end) in whole UTC hours: rollups hold hours, so a raw query over the same
    window counts the same events."""

    start: dt.datetime
    end: dt.datetime

    def __post_init__(self) -> None:
        if self.start != floor_hour(self.start) or self.end != floor_hour(self.end):
            raise ValueError("a report window starts and ends on whole hours")
        if self.end <= self.start:
            raise ValueError("a report window ends after it starts")

    @classmethod
    def last_days(cls, days: int, now: dt.datetime | None = None) -> Window:
        """The last `days` x 24 hours, up to the end of the current hour."""
        end = floor_hour(now or dt.datetime.now(dt.UTC)) + HOUR
        return cls(end - int(days) * DAY, end)

    @classmethod
    def parse(cls, start: str, end: str | None, now: dt.datetime | None = None) -> Window:
        """From `--from` / `--to` (exclusive; default: the end of the current hour)."""
        until = parse_time(end) if end else floor_hour(now or dt.datetime.now(dt.UTC)) + HOUR
        return cls(parse_time(start), until)

    def sql(self, column: str) -> str:
        return f"{column} >= {sql_time(self.start)} AND {column} < {sql_time(self.end)}"

    def inner(self, grain: str) -> tuple[dt.datetime, dt.datetime]:
        """The part of the window made of whole periods of `grain` (hour or day)."""
        if grain == "hour":
            return self.start, self.end
        midnight = self.start.replace(hour=0)
        start = midnight if midnight == self.start else midnight + DAY
        end = self.end.replace(hour=0)
        return start, max(start, end)


@dataclass(frozen=True)
class Filters:
    """Which events count; the same conditions hold on beacon.events and on the rollups."""

    site: str | None = None
    campaign: str | None = None
    ad: str | None = None
    verified_only: bool = False
    # Web filters, (key, value) over a visit's columns (analytics/web.py WEB_KEYS): only the
    # web figures read them.
    web: tuple[tuple[str, str], ...] = ()
    # Invalid traffic (analytics/ivt.py): left out of the ad figures unless included.
    include_ivt: bool = False
    duplicate_click_window_s: int = DUPLICATE_CLICK_WINDOW_S

    def valid(self, table: str = "") -> str:
        """The condition an impression, viewable event or click counts under: valid traffic
        only ("1" when invalid traffic is included). `table`: "e." in a join."""
        return "1" if self.include_ivt else f"{table}ivt = ''"

    def sql(self, columns: frozenset[str] = ID_COLUMNS) -> str:
        """Conditions over the named columns that a table has ("1" for none)."""
        where = [
            f"{name} = {sql_string(value)}"
            for name, value in (("site", self.site), ("campaign", self.campaign), ("ad", self.ad))
            if value is not None and name in columns
        ]
        if self.verified_only and "verified" in columns:
            # Send events come from the sender's own systems, unsigned.
            sends = " OR event_type = 'send'" if "event_type" in columns else ""
            where.append(f"(verified = 1{sends})")
        return " AND ".join(where) or "1"


def bucket(group: str | None, column: str) -> str:
    """The start of the hour or day of `column`, as text ('' without grouping)."""
    if group == "hour":
        return f"formatDateTime(toStartOfHour({column}), '%Y-%m-%d %H:00')"
    if group == "day":
        return f"toString(toDate({column}))"
    return "''"
