"""The dashboard page as HTML: one inline stylesheet and one same-origin script (the realtime
tile's refresh); filtering is plain links."""

from __future__ import annotations

from html import escape
from typing import Any

from analytics.dashboard.filters import FILTER_KEYS, ID_KEYS, LABELS, Selection
from analytics.dashboard.style import document
from analytics.dashboard.svg import line_chart, stacked_bars
from analytics.dashboard.tables import Column, key_text, money_html, number, table
from analytics.dashboard.web_figures import PAGE_TABLES
from analytics.web import WEB_KEYS
from contract.geo import ATTRIBUTION

BLUE, GREEN, AMBER, GREY, PURPLE = "#3b6fe0", "#14a37f", "#e29a1b", "#c3cad6", "#7a5af8"
RANGES = (("24 hours", 1), ("7 days", 7), ("30 days", 30))
WIDE_CHART_PX = 1200
REALTIME_JS = "/dashboard/realtime.js"
REALTIME_JSON = "/dashboard/realtime.json"
VISITS = [Column("visitors", "Visitors"), Column("visits", "Visits"),
          Column("bounce_rate", "Bounce", "pct")]  # fmt: skip
VIEWS = [Column("visitors", "Visitors"), Column("pageviews", "Views")]
# The web tables: (data name, heading, columns), in the order of the page.
WEB_TABLES = (
    ("sources", "Sources", VISITS),
    ("referrers", "Referrers", VISITS),
    ("utm_source", "UTM sources", VISITS),
    ("utm_medium", "UTM mediums", VISITS),
    ("utm_campaign", "UTM campaigns", VISITS),
    ("countries", "Countries", VISITS),
    ("pages", "Top pages", VIEWS),
    ("entry_pages", "Entry pages", VISITS),
    ("exit_pages", "Exit pages", [Column("visitors", "Visitors"), Column("visits", "Visits")]),
    ("devices", "Devices", VISITS),
    ("browsers", "Browsers", VISITS),
    ("os", "Operating systems", VISITS),
)
WEB_KEYS_OF = {
    "sources": "source", "referrers": "referrer_host", "utm_source": "utm_source",
    "utm_medium": "utm_medium", "utm_campaign": "utm_campaign", "countries": "country",
    "pages": "page", "entry_pages": "entry_page", "exit_pages": "exit_page",
    "devices": "device_type", "browsers": "browser", "os": "os",
}  # fmt: skip


# docs/reports.md "Invalid traffic".
IVT_NOTE = (
    "Impressions, viewability and clicks leave invalid traffic out: known crawlers, data-center "
    "addresses, prefetches and duplicate clicks; the invalid columns count it "
    "(<code>beacon report --view ivt</code> says why)."
)


def kpi(key: str, label: str, value: str, note: str = "", extra: str = "") -> str:
    return (
        f'<div class="kpi{" live" if key == "realtime" else ""}" data-kpi="{key}"{extra}>'
        f'<div class="label">{label}</div><div class="value">{value}</div>'
        f'<div class="note">{note}</div></div>'
    )


def header(data: dict[str, Any], selection: Selection) -> str:
    """The title, the site picker, the range and grouping, and sign out."""
    w, site = data["window"], selection.site
    items = [f'<li><a href="{escape(selection.href(drop=FILTER_KEYS))}"'
             f'{" class=on" if site is None else ""}>All sites</a></li>']  # fmt: skip
    for row in data["sites"]:
        name = str(row["site"])
        if not name:
            continue
        href = Selection(selection.days, selection.group_given, (("site", name),)).href()
        on = " class=on" if name == site else ""
        views = number(row["pageviews"])
        items.append(f'<li><a href="{escape(href)}"{on} data-site="{escape(name)}">'
                     f"{escape(name)}<small>{views} views</small></a></li>")  # fmt: skip
    picker = (f'<details class="picker"><summary>{escape(site or "All sites")}</summary>'
              f"<ul>{''.join(items)}</ul></details>")  # fmt: skip
    ranges = "".join(
        f'<a href="{escape(selection.href(days=n))}"{" class=on" if n == selection.days else ""}>'
        f"{name}</a>" for name, n in RANGES
    )  # fmt: skip
    groups = "".join(
        f'<a href="{escape(selection.href(group=g))}"{" class=on" if g == selection.group else ""}>'
        f"by {g}</a>" for g in ("hour", "day")
    )  # fmt: skip
    return (f'<header><h1>Beacon</h1>{picker}<nav aria-label="Range">{ranges}</nav>'
            f'<nav aria-label="Grouping">{groups}</nav><span class="range">'
            f'{escape(w["start"])} to {escape(w["end"])} UTC</span><div class="end">'
            '<form method="post" action="/dashboard/logout"><button>Sign out</button></form>'
            "</div></header>")  # fmt: skip


def filter_bar(selection: Selection) -> str:
    """Every filter in force, each with a way to clear it, and one to clear them all."""
    active = selection.active()
    if not active:
        return ('<nav class="filters" aria-label="Filters"><span class="hint">No filters: '
                "click a row of any table to filter the whole page.</span></nav>")  # fmt: skip
    chips = "".join(
        f'<span class="chip" data-filter="{k}">{LABELS[k]} <b title="{escape(v)}">'
        f"{escape(key_text(k, v))}</b>"
        f'<a href="{escape(selection.href(drop=(k,)))}" aria-label="Clear {LABELS[k]}" '
        f'title="Clear">&times;</a></span>' for k, v in active
    )  # fmt: skip
    clear = f'<a class="clear" href="{escape(selection.without_filters())}">Clear all</a>'
    return f'<nav class="filters" aria-label="Filters">Filtered by {chips}{clear}</nav>'


def ignored_note(selection: Selection, applies: tuple[str, ...]) -> str:
    """Which active filters a section's figures do not follow."""
    left = [LABELS[k] for k, _ in selection.active() if k not in applies]
    if not left:
        return ""
    return f"<small>not filtered by {escape(', '.join(left))}</small>"


def card(name: str, heading: str, body: str) -> str:
    return f'<section class="card" data-table="{name}"><h3>{heading}</h3>{body}</section>'


def web_section(data: dict[str, Any], selection: Selection) -> str:
    web, labels = data["web"], data["labels"]
    t, live = web["totals"], web["realtime"]
    # Without campaign and ad, which realtime.json refuses: they filter email and ads alone.
    realtime_url = REALTIME_JSON + selection.href(drop=("campaign", "ad"))
    # Realtime visitors are counted from raw events, by site alone: no visit, no source.
    left = ", ".join(LABELS[k] for k, _ in selection.web)
    live_note = "last 5 minutes<span data-at></span>" + (
        f"; not filtered by {escape(left)}" if left else ""
    )
    tiles = "".join([
        kpi("visitors", "Unique visitors", number(t["visitors"])),
        kpi("visits", "Visits", number(t["visits"])),
        kpi("pageviews", "Page views", number(t["pageviews"])),
        kpi("views_per_visit", "Views per visit", number(t["views_per_visit"], "ratio")),
        kpi("bounce_rate", "Bounce rate", number(t["bounce_rate"], "pct")),
        kpi("visit_duration", "Visit duration", number(t["visit_duration_s"], "duration")),
        kpi("realtime", "Realtime", number(live["visitors"]), live_note,
            f' data-realtime-url="{escape(realtime_url)}"'),
    ])  # fmt: skip
    s, group = web["series"], data["window"]["group"]
    chart = line_chart("Visitors and page views", labels, [
        ("visitors", BLUE, s["visitors"]), ("page views", PURPLE, s["pageviews"]),
    ], WIDE_CHART_PX, area=True)  # fmt: skip
    cards = []
    for name, heading, columns in WEB_TABLES:
        keys: tuple[str, ...] = (WEB_KEYS_OF[name],)
        if name in PAGE_TABLES and selection.site is None:
            keys += ("site",)
        body = table(web["tables"][name], keys, columns, selection, columns[0].field)
        cards.append(card(name, heading, body))
    goals = table(web["goals"], ("goal",), [
        Column("visitors", "Visitors"), Column("converted", "Converted"),
        Column("conversions", "Conversions"), Column("conversion_rate", "Rate", "pct"),
    ], selection, "converted")  # fmt: skip
    cards.append(card("goals", "Goals", goals))
    note = ignored_note(selection, ("site", *WEB_KEYS))
    return (f"<h2>Web{note}</h2>"
            f'<section class="kpis">{tiles}</section>'
            f'<section class="card wide"><h3>Visitors and page views per {group}</h3>{chart}'
            f"</section>{''.join(cards)}")  # fmt: skip


def mail_section(data: dict[str, Any], selection: Selection) -> str:
    t, s, labels, group = data["totals"], data["series"], data["labels"], data["window"]["group"]
    tiles = "".join([
        kpi("opens", "Opens", number(t["opens"]), f"{number(t['machine_opens'])} by machines"),
        kpi("clicks", "Clicks", number(t["human_clicks"]), f"{number(t['clicks'])} in all"),
        kpi("conversions", "Conversions", number(t["conversions"])),
        kpi("revenue", "Revenue", money_html(t["revenue"])),
    ])  # fmt: skip
    trend = line_chart("Opens, clicks and conversions", labels, [
        ("human opens", BLUE, s["human_opens"]), ("human clicks", GREEN, s["human_clicks"]),
        ("conversions", AMBER, s["conversions"]),
    ])  # fmt: skip
    machines = stacked_bars("Human and machine opens", labels, [
        ("human", BLUE, s["human_opens"]), ("machine", GREY, s["machine_opens"]),
    ])  # fmt: skip
    campaigns = table(data["campaigns"], ("campaign",), [
        Column("sent", "Sent"), Column("unique_opens", "Opened"),
        Column("machine_opens", "Machine opens"), Column("unique_clicks", "Clicked"),
        Column("ctr", "CTR", "rate"), Column("click_to_open_rate", "Click-to-open", "rate"),
        Column("conversions", "Conversions"), Column("revenue", "Revenue"),
    ], selection, "unique_opens")  # fmt: skip
    ads = table(data["ads"], ("campaign", "ad"), [
        Column("impressions", "Impressions"),
        Column("viewable_impressions", "Viewable"),
        Column("viewability_rate", "Viewability", "rate"), Column("clicks", "Clicks"),
        Column("machine_clicks", "Machine clicks"), Column("ctr", "CTR", "rate"),
        Column("conversions", "Conversions"), Column("revenue", "Revenue"),
        Column("invalid_impressions", "Invalid impressions"),
        Column("invalid_clicks", "Invalid clicks"),
    ], selection, "impressions")  # fmt: skip
    note = ignored_note(selection, ID_KEYS)
    return (f"<h2>Email and ads{note}</h2>"
            f'<section class="kpis mail">{tiles}</section>'
            f'<section class="card half"><h3>Opens, clicks and conversions per {group}</h3>'
            f'{trend}</section><section class="card half"><h3>Human and machine opens per '
            f"{group}</h3>{machines}</section>"
            f'<section class="card wide" data-table="campaigns"><h3>Campaigns</h3>{campaigns}'
            f'</section><section class="card wide" data-table="ads"><h3>Ads</h3>{ads}'
            f"<p class=\"note\">{IVT_NOTE}</p></section>")  # fmt: skip


def gap(seconds: int) -> str:
    return f"{seconds // 60} minutes" if seconds % 60 == 0 else f"{seconds} seconds"


def dashboard_page(data: dict[str, Any], selection: Selection) -> str:
    body = (f"{header(data, selection)}{filter_bar(selection)}<main>"
            f"{web_section(data, selection)}{mail_section(data, selection)}</main>"
            "<footer><p>Read-only. From the rollups, and raw events where a rollup cannot "
            f"answer. A visit ends after {gap(data['visit_gap_s'])} without an event, and at "
            "midnight UTC (the cookieless visitor id changes then). Machine opens include "
            "Apple Mail Privacy Protection, bots and link scanners.</p>"
            f"<p>{escape(ATTRIBUTION)}</p></footer>")  # fmt: skip
    return document("Beacon dashboard", body, REALTIME_JS)
