"""What the dashboard's query string asks for: the range, the grouping and the filters.

Every table row is a link that adds its filter to the query string, so filtering needs no
script; a name or value the page does not know is refused (ValueError, a 400), never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from analytics.report_window import Filters
from analytics.web import WEB_KEYS
from contract.numbers import parse_uint

MAX_DAYS = 400
MAX_VALUE_CHARS = 256
# Event ids: an empty value means no filter, as in `beacon report --site`.
ID_KEYS = ("site", "campaign", "ad")
FILTER_KEYS = ID_KEYS + WEB_KEYS
LABELS = {
    "site": "Site", "campaign": "Campaign", "ad": "Ad", "source": "Source",
    "referrer_host": "Referrer", "utm_source": "UTM source", "utm_medium": "UTM medium",
    "utm_campaign": "UTM campaign", "country": "Country", "device_type": "Device",
    "browser": "Browser", "os": "OS", "page": "Page", "entry_page": "Entry page",
    "exit_page": "Exit page", "goal": "Goal",
}  # fmt: skip
# What an empty value of a web key stands for, on the page.
BLANKS = {
    "referrer_host": "(none)", "source": "(none)", "country": "(unknown)",
    "utm_source": "(none)", "utm_medium": "(none)", "utm_campaign": "(none)",
    "page": "(no page view)", "entry_page": "(no page view)", "exit_page": "(no page view)",
    "browser": "(unknown)", "os": "(unknown)", "device_type": "(unknown)",
}  # fmt: skip
# The values some keys can take (docs/reports.md "Web analytics"): anything else matches
# nothing, so it is refused.
CHOICES = {
    "source": ("search", "social", "email", "direct", "other"),
    "device_type": ("desktop", "mobile", "tablet", "bot", "other", ""),
}
COUNTRY_RE = re.compile(r"(?:[A-Z]{2})?")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
PATH_KEYS = ("page", "entry_page", "exit_page")
OTHER_PARAMS = ("days", "group")


@dataclass(frozen=True)
class Selection:
    """The range in days, the grouping (None: chosen by the range) and the active filters."""

    days: int = 7
    group_given: str | None = None
    ids: tuple[tuple[str, str], ...] = ()  # site, campaign, ad
    web: tuple[tuple[str, str], ...] = ()  # over WEB_KEYS, AND-ed

    @property
    def group(self) -> str:
        return self.group_given or ("hour" if self.days <= 2 else "day")

    @property
    def site(self) -> str | None:
        return dict(self.ids).get("site")

    def active(self) -> tuple[tuple[str, str], ...]:
        """Every filter in force, in the order of FILTER_KEYS."""
        given = dict(self.ids + self.web)
        return tuple((k, given[k]) for k in FILTER_KEYS if k in given)

    def filters(self) -> Filters:
        ids = dict(self.ids)
        return Filters(ids.get("site"), ids.get("campaign"), ids.get("ad"), web=self.web)

    def href(
        self,
        add: Iterable[tuple[str, str]] = (),
        drop: Iterable[str] = (),
        days: int | None = None,
        group: str | None = None,
    ) -> str:
        """This page's query string with filters added (replacing the same key) or dropped."""
        gone = set(drop)
        filters = {k: v for k, v in self.active() if k not in gone}
        filters.update(add)
        params: list[tuple[str, str]] = [("days", str(days or self.days))]
        if group or (self.group_given and days is None):
            params.append(("group", group or self.group))
        params += [(k, filters[k]) for k in FILTER_KEYS if k in filters]
        return "?" + urlencode(params, quote_via=quote)

    def without_filters(self) -> str:
        return self.href(drop=FILTER_KEYS)


def checked(key: str, value: str, goals: tuple[str, ...] = ()) -> str:
    """`value` when `key` can hold it (a goal: one of `goals`, when they are listed); else
    ValueError saying why."""
    if len(value) > MAX_VALUE_CHARS:
        raise ValueError(f"{key}: at most {MAX_VALUE_CHARS} characters")
    if CONTROL_RE.search(value):
        raise ValueError(f"{key}: no control characters")
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{key}: one of {', '.join(v or '(empty)' for v in CHOICES[key])}")
    if key == "country" and not COUNTRY_RE.fullmatch(value):
        raise ValueError("country: two capital letters (ISO 3166-1), or empty for unknown")
    if key in PATH_KEYS and value and not value.startswith("/"):
        raise ValueError(f"{key}: a path, starting with /")
    if key == "goal" and goals and value not in goals:
        raise ValueError(f"goal: one of {', '.join(goals)} (BEACON_GOALS)")
    return value


def parse_selection(
    query: Mapping[str, str], names: Iterable[str], goals: tuple[str, ...] = ()
) -> Selection:
    """The selection in a query string given as its mapping and every name in it (repeats
    included), `goals` the goals listed if any; raises ValueError on an unknown or repeated
    name or a bad value."""
    seen: set[str] = set()
    for name in names:
        if name not in FILTER_KEYS and name not in OTHER_PARAMS:
            raise ValueError(f"unknown parameter {name[:40]!r}")
        if name in seen:
            raise ValueError(f"{name}: given twice")
        seen.add(name)
    days = parse_uint(query.get("days", "7"), MAX_DAYS, min_value=1)
    if days is None:
        raise ValueError(f"days: 1 to {MAX_DAYS}")
    group = query.get("group") or None
    if group not in (None, "hour", "day"):
        raise ValueError("group: hour or day")
    ids = tuple((k, checked(k, query[k])) for k in ID_KEYS if query.get(k))
    web = tuple((k, checked(k, query[k], goals)) for k in WEB_KEYS if k in query)
    return Selection(days, group, ids, web)
