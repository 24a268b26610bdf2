"""The web truth of a simulation: every visit as the plan made it, and the rows of the web
report views counted from them.

The definitions are docs/reports.md's ("Web analytics": visits, goals, the figures), written
out again here on purpose: a report that gets one wrong disagrees with this. Where a visit came
from (its source group, referrer host, UTM) is written down with each landing in
collector/simulate/web.py. What a
visit is made of (its visitor, pages, custom events, engaged time, where it came from, the
visitor's country and device) is what the plan chose; only when a visit began comes from the
sender, for the rows by hour or day.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from collector.simulate.rounding import ratio

# The keys of each view's rows, after the period when grouped.
VIEW_KEYS = {
    "visits": ("site",),
    "sources": ("site", "source", "referrer_host", "utm_source", "utm_medium", "utm_campaign"),
    "countries": ("site", "country"),
    "devices": ("site", "device_type", "browser", "os"),
}
GOAL_KEYS = ("site", "source", "utm_campaign")  # a goal row's group, the goal after the site
WEB_VIEWS = (*VIEW_KEYS, "goals", "realtime")
PERIODS = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}  # as `beacon report --group` prints


@dataclass
class Visit:
    """One visit. `dims`: site, source, referrer_host, utm_source, utm_medium, utm_campaign,
    country, device_type, browser, os. `mark`: the name its first request carries."""

    visitor: str
    mark: str
    dims: dict[str, str]
    pages: list[str] = field(default_factory=list)  # url_path of each page view, in order
    events: list[str] = field(default_factory=list)  # custom event names
    engaged_ms: int = 0  # every engagement report's engaged_ms, added up

    @property
    def bounce(self) -> bool:
        return len(self.pages) == 1 and not self.events

    def reached(self, goal: str) -> bool:
        """A page goal: a view of exactly that path; else a custom event of that name."""
        return goal in self.pages if goal.startswith("/") else goal in self.events


def figures(visits: list[Visit]) -> dict[str, Any]:
    """Every web row's figures; None for the rates when there is no visit."""
    n = len(visits)
    pageviews = sum(len(v.pages) for v in visits)
    bounces = sum(v.bounce for v in visits)
    duration_ms = sum(v.engaged_ms for v in visits)  # engaged time, when the visit has any
    return {
        "visitors": len({v.visitor for v in visits}),
        "visits": n,
        "pageviews": pageviews,
        "views_per_visit": round(pageviews / n, 2) if n else None,
        "bounce_rate": ratio(bounces, n),
        "visit_duration_s": round(duration_ms / n / 1000, 1) if n else None,
    }


def goal_list(setting: str) -> tuple[str, ...]:
    """BEACON_GOALS as written: comma-separated entries."""
    return tuple(e.strip() for e in setting.split(",") if e.strip())


class WebTruth:
    """The visits of every web site. `goals`: as BEACON_GOALS (empty: every custom event)."""

    def __init__(self, goals: tuple[str, ...] = ()) -> None:
        self.goals = goals
        self.visits: list[Visit] = []
        # When each visit's first request went: (before, after) it, wall-clock seconds.
        self.started: dict[str, tuple[float, float]] = {}

    def visit(self, visit: Visit) -> Visit:
        self.visits.append(visit)
        return visit

    def period(self, group: str | None) -> Callable[[Visit], str]:
        """A visit's period (by its start), as a report prints it."""
        if group is None:
            return lambda v: ""
        fmt = PERIODS[group]

        def of(visit: Visit) -> str:
            if visit.mark not in self.started:
                raise ValueError(f"visit {visit.mark} was not sent: no start to group by")
            before, after = (
                dt.datetime.fromtimestamp(t, dt.UTC).strftime(fmt) for t in self.started[visit.mark]
            )
            if before != after:
                raise ValueError(f"visit {visit.mark} began at the turn of a period: rerun")
            return before

        return of

    def grouped(self, keys: Iterable[str], group: str | None) -> dict[tuple[str, ...], list[Visit]]:
        period = self.period(group)
        found: dict[tuple[str, ...], list[Visit]] = defaultdict(list)
        for v in self.visits:
            found[(period(v), *(v.dims[k] for k in keys))].append(v)
        return found

    def rows(self, view: str, group: str | None = None) -> list[dict[str, Any]]:
        """The rows of `beacon report --view <view> [--group <group>] --format json`, in its
        order: by visits (most first), then the keys; goals by site, goal, most converted."""
        if view == "goals":
            return self.goal_rows(group)
        if view == "realtime":
            if group is not None:
                raise ValueError("realtime has no periods: the last 5 minutes")
            return self.realtime_rows()
        keys = VIEW_KEYS[view]
        names = ((group,) if group else ()) + keys
        out = []
        for key, visits in self.grouped(keys, group).items():
            out.append({**dict(zip(names, key[0 if group else 1 :], strict=True)),
                        **figures(visits)})  # fmt: skip
        out.sort(key=lambda r: (r.get(group or "", ""), -r["visits"], *(r[k] for k in keys)))
        return out

    def goal_names(self) -> tuple[str, ...]:
        return self.goals or tuple(sorted({e for v in self.visits for e in v.events}))

    def goal_rows(self, group: str | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key, visits in self.grouped(GOAL_KEYS, group).items():
            period, site, source, campaign = key
            visitors = len({v.visitor for v in visits})
            for goal in self.goal_names():
                reached = [v for v in visits if v.reached(goal)]
                if not reached:
                    continue
                converted = len({v.visitor for v in reached})
                out.append({
                    **({group: period} if group else {}),
                    "site": site, "goal": goal, "source": source, "utm_campaign": campaign,
                    "visitors": visitors, "converted": converted, "conversions": len(reached),
                    "conversion_rate": ratio(converted, visitors),
                })  # fmt: skip
        out.sort(key=lambda r: (r.get(group or "", ""), r["site"], r["goal"], -r["converted"],
                                r["source"], r["utm_campaign"]))  # fmt: skip
        return out

    def realtime_rows(self) -> list[dict[str, Any]]:
        """Visitors and page views per site: every visit, all of them sent within minutes."""
        by_site = self.grouped(("site",), None)
        return [
            {"site": site, "visitors": len({v.visitor for v in visits}),
             "pageviews": sum(len(v.pages) for v in visits)}
            for (_, site), visits in sorted(by_site.items())
        ]  # fmt: skip
