"""The ground truth of a simulation, counted as the plan is made, in the shape reports print.

The definitions are docs/reports.md's ("Campaign report", "Invalid traffic"), written out
again here on purpose: a report that gets one wrong disagrees with this.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from collector.simulate.rounding import money, ratio
from collector.simulate.visits import WEB_VIEWS, WebTruth

__all__ = ["Truth", "ratio"]

SCROLL_MARKS = (25, 50, 75, 100)
# Who made an open, a click or an impression: the plan's own choice, recorded when it makes
# the request. Which of them are machines, which come through a mail provider's proxy and
# which are invalid traffic follows from who they are, never from the rules that classify
# stored events (analytics/machine_opens.py, the consumer's invalid-traffic reasons), so a
# rule that misses or wrongly flags one makes a report disagree with this truth.
# Nobody read the mail or saw the ad: a program, or a browser's fetch ahead of any view.
MACHINES = frozenset({"scanner", "apple_mpp", "bot", "data_center", "prefetch"})
PROXIED = frozenset({"apple_mpp", "gmail"})  # fetched by Apple's or Google's proxy
ACTORS = MACHINES | PROXIED | {"person"}
# Who sent invalid traffic, and the reason its impressions, viewable events and clicks are
# kept under (sends and opens are not filtered): a program that names itself in its user
# agent (curl, AhrefsBot: collector/simulate/invalid.py), one on a cloud server's address, a
# browser fetching ahead of a view. Again the plan's choice of sender, not Beacon's lists.
INVALID = {"bot": "crawler", "data_center": "data_center", "prefetch": "prefetch"}
# A person's click on an ad a moment (milliseconds) after their click on it: a duplicate for
# any BEACON_DUPLICATE_CLICK_WINDOW_S of a second or more.
DUPLICATE_CLICK = "duplicate_click"


class Funnel:
    """Counts of one campaign, or one ad."""

    def __init__(self) -> None:
        self.n: Counter[str] = Counter()
        self.openers: set[str] = set()
        self.human_openers: set[str] = set()
        self.clickers: set[str] = set()
        self.sent: set[str] = set()
        self.revenue = Decimal(0)

    def figures(self) -> dict[str, Any]:
        n, sent = self.n, len(self.sent) or None
        unique_clicks = len(self.clickers)
        human_clicks = n["clicks"] - n["machine_clicks"]
        return {
            "sent": sent,
            "impressions": n["impressions"],
            "invalid_impressions": n["invalid_impressions"],
            "measured_impressions": n["measured_impressions"],
            "viewable_impressions": n["viewable_impressions"],
            "viewability_rate": ratio(n["viewable_impressions"], n["measured_impressions"]),
            "opens": n["opens"],
            "unique_opens": len(self.openers),
            "human_opens": n["opens"] - n["machine_opens"],
            "machine_opens": n["machine_opens"],
            "unique_human_opens": len(self.human_openers),
            "proxied_opens": n["proxied_opens"],
            "clicks": n["clicks"],
            "machine_clicks": n["machine_clicks"],
            "unique_clicks": unique_clicks,
            "invalid_clicks": n["invalid_clicks"],
            "ctr": ratio(unique_clicks, sent) if sent else ratio(human_clicks, n["impressions"]),
            "click_to_open_rate": ratio(unique_clicks, len(self.openers)),
            "conversions": n["conversions"],
            "conversion_rate": ratio(n["conversions"], unique_clicks),
            "revenue": {"EUR": money(self.revenue)} if n["conversions"] else {},
        }


def is_machine(actor: str) -> bool:
    if actor not in ACTORS:
        raise ValueError(f"unknown actor {actor!r}")
    return actor in MACHINES


def invalid_reason(actor: str) -> str:
    """The reason an impression, viewable event or click `actor` sent is invalid ("": valid)."""
    if actor not in ACTORS:
        raise ValueError(f"unknown actor {actor!r}")
    return INVALID.get(actor, "")


def person_key(person: dict[str, str]) -> str:
    return person.get("visitor") or f"{person['message']}\0{person['recipient']}"


class Truth:
    """`goals`: the collector's BEACON_GOALS entries (empty: every custom event is a goal)."""

    def __init__(self, goals: tuple[str, ...] = ()) -> None:
        self.web = WebTruth(goals)
        self.campaigns: dict[str, Funnel] = defaultdict(Funnel)
        self.ads: dict[tuple[str, str], Funnel] = defaultdict(Funnel)
        self.events: Counter[tuple[str, str, str]] = Counter()
        # Invalid traffic by campaign, ad, event type and reason: what the ad figures leave out.
        self.ivt: Counter[tuple[str, str, str, str]] = Counter()
        self.visitors: dict[str, set[str]] = defaultdict(set)
        self.site_orders: Counter[str] = Counter()
        self.site_revenue: dict[str, Decimal] = defaultdict(Decimal)
        self.pages: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
        self.page_visitors: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self.referrers: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.referrer_visitors: dict[tuple[str, str], set[str]] = defaultdict(set)

    def funnels(self, person: dict[str, str]) -> list[Funnel]:
        out = [self.campaigns[person["campaign"]]]
        if person.get("ad"):
            out.append(self.ads[person["campaign"], person["ad"]])
        return out

    def sent(self, campaign: str, site: str, message: str, recipients: list[str]) -> None:
        self.campaigns[campaign].sent.update(f"{message}\0{r}" for r in recipients)
        self.events[site, campaign, "send"] += len(recipients)

    def open(self, person: dict[str, str], actor: str) -> None:
        """An open the plan sent as `actor` (one of ACTORS)."""
        key = person_key(person)
        machine, proxied = is_machine(actor), actor in PROXIED
        for f in self.funnels(person):
            f.n["opens"] += 1
            f.n["machine_opens"] += machine
            f.n["proxied_opens"] += proxied
            f.openers.add(key)
            if not machine:
                f.human_openers.add(key)
        self.events[person["site"], person["campaign"], "open"] += 1

    def click(self, person: dict[str, str], actor: str, again: bool = False) -> None:
        """A click the plan sent as `actor` (one of ACTORS); `again`: a person's second click
        on an ad, a moment after their first (DUPLICATE_CLICK)."""
        machine, reason = is_machine(actor), invalid_reason(actor)
        key = person_key(person)
        if again:
            funnel = self.ads.get((person["campaign"], person.get("ad", "")))
            if reason or funnel is None or key not in funnel.clickers:
                raise ValueError("a duplicate click is a person's click on an ad clicked before")
            reason = DUPLICATE_CLICK
        for f in self.funnels(person):
            if reason:  # a duplicate's person clicked before: the unique clicks stay
                f.n["invalid_clicks"] += 1
                continue
            f.n["clicks"] += 1
            f.n["machine_clicks"] += machine
            if not machine:
                f.clickers.add(key)
        if reason:
            self.ivt[person["campaign"], person.get("ad", ""), "click", reason] += 1
        self.events[person["site"], person["campaign"], "click"] += 1

    def impressions(
        self, site: str, campaign: str, ad: str, count: int, actor: str = "person"
    ) -> None:
        """`count` ad-server pixels, fetched by `actor` (a person's browser showing the ad)."""
        reason = invalid_reason(actor)
        for f in (self.campaigns[campaign], self.ads[campaign, ad]):
            f.n["invalid_impressions" if reason else "impressions"] += count
        if reason and count:
            self.ivt[campaign, ad, "impression", reason] += count
        self.events[site, campaign, "impression"] += count

    def tag_impression(
        self, site: str, campaign: str, ad: str, measured: bool, actor: str = "person"
    ) -> None:
        """An impression of the /a.js tag: an impression like the ad server's, and a measured
        one when the browser could observe the slot; left out when `actor` sent invalid
        traffic."""
        reason = invalid_reason(actor)
        for f in (self.campaigns[campaign], self.ads[campaign, ad]):
            if reason:
                f.n["invalid_impressions"] += 1
                continue
            f.n["impressions"] += 1
            f.n["measured_impressions"] += measured
        if reason:
            self.ivt[campaign, ad, "impression", reason] += 1
        self.events[site, campaign, "impression"] += 1

    def viewable(self, site: str, campaign: str, ad: str, actor: str = "person") -> None:
        """The tag's viewable event of a measured impression (left out when invalid)."""
        reason = invalid_reason(actor)
        if reason:
            self.ivt[campaign, ad, "viewable", reason] += 1
        else:
            for f in (self.campaigns[campaign], self.ads[campaign, ad]):
                f.n["viewable_impressions"] += 1
        self.events[site, campaign, "viewable"] += 1

    def conversion(
        self, campaign: str, ad: str, site: str, value: Decimal, pixels: int, stored_as: str
    ) -> None:
        """One order (`pixels` times the thank-you page) belonging to campaign and ad;
        `stored_as`: the campaign its pixel names itself ("" when a click id tells)."""
        funnels = [self.campaigns[campaign]] + ([self.ads[campaign, ad]] if ad else [])
        for f in funnels:
            f.n["conversions"] += 1
            f.revenue += value
        self.site_orders[site] += 1
        self.site_revenue[site] += value
        self.events[site, stored_as, "conversion"] += pixels

    def pageview(self, site: str, url: str, referrer: str, visitor: str) -> None:
        """A page view, from a person or a crawler: the pages, referrers and site views
        count them all."""
        page = self.page(site, url)
        self.pages[page]["pageviews"] += 1
        self.page_visitors[page].add(visitor)
        source = (site, urlsplit(referrer).hostname or "")
        self.referrers[source]["pageviews"] += 1
        self.referrer_visitors[source].add(visitor)
        self.visitors[site].add(visitor)
        self.events[site, "", "pageview"] += 1

    def engagement(self, site: str, url: str, scroll_pct: int) -> None:
        """An engagement report: the scroll depth its page's readers reached."""
        page = self.page(site, url)
        for mark in SCROLL_MARKS:
            self.pages[page][f"scroll_{mark}"] += scroll_pct >= mark
        self.events[site, "", "engagement"] += 1

    def custom(self, site: str) -> None:
        self.events[site, "", "custom"] += 1

    @staticmethod
    def page(site: str, url: str) -> tuple[str, str, str]:
        parts = urlsplit(url)
        return site, parts.hostname or "", parts.path or "/"

    def web_rows(self, view: str, group: str | None = None) -> list[dict[str, Any]]:
        """The rows of a web view (collector/simulate/visits.py): visits, sources,
        countries, devices, goals, realtime."""
        return self.web.rows(view, group)

    def as_dict(self) -> dict[str, Any]:
        """The truth as `beacon report --format json` rows (the views' keys)."""
        sites = sorted({s for s, _, _ in self.events})
        campaigns = sorted(self.campaigns.items())
        ads = sorted(self.ads.items())
        scroll = [f"scroll_{mark}" for mark in SCROLL_MARKS]
        pages = [
            {"site": s, "url_host": h, "url_path": p, "pageviews": counts["pageviews"],
             **{k: counts[k] for k in scroll}, "unique_visitors": len(self.page_visitors[s, h, p])}
            for (s, h, p), counts in sorted(self.pages.items())
        ]  # fmt: skip
        referrers = [
            {"site": s, "referrer_host": h, "pageviews": counts["pageviews"],
             "unique_visitors": len(self.referrer_visitors[s, h])}
            for (s, h), counts in sorted(self.referrers.items())
        ]  # fmt: skip
        return {
            "events_total": sum(self.events.values()),
            "campaigns": [{"campaign": c, **f.figures()} for c, f in campaigns],
            "ads": [{"campaign": c, "ad": a, **f.figures()} for (c, a), f in ads],
            "ivt": [
                {"campaign": c, "ad": a, "event_type": t, "reason": r, "events": n}
                for (c, a, t, r), n in sorted(self.ivt.items())
            ],
            "sites": [
                {
                    "site": s,
                    "pageviews": self.events[s, "", "pageview"],
                    "unique_visitors": len(self.visitors[s]),
                    "events": sum(n for (site, _, _), n in self.events.items() if site == s),
                    "conversions": self.site_orders[s],
                    "revenue": {"EUR": money(self.site_revenue[s])} if self.site_orders[s] else {},
                }
                for s in sites
            ],
            "pages": pages,
            "referrers": referrers,
            "events": [
                {"site": s, "campaign": c, "event_type": t, "events": n}
                for (s, c, t), n in sorted(self.events.items())
            ],
            "web": {view: self.web_rows(view) for view in WEB_VIEWS},
        }
