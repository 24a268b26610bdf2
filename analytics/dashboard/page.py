"""The dashboard and login pages as HTML: one inline stylesheet, no script."""

from __future__ import annotations

from html import escape
from typing import Any

from analytics.dashboard.svg import line_chart, stacked_bars

BLUE, GREEN, AMBER, GREY = "#3b6fe0", "#14a37f", "#e29a1b", "#c3cad6"
RANGES = (("24 hours", 1), ("7 days", 7), ("30 days", 30))

STYLE = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:#1c2333;background:#f4f6fa}
header{display:flex;align-items:center;gap:24px;padding:14px 28px;background:#fff;
  border-bottom:1px solid #e3e7ee}
header h1{font-size:18px;margin:0;letter-spacing:.02em}
header nav{display:flex;gap:6px;margin-left:auto}
header nav a{padding:5px 11px;border-radius:6px;color:#445;text-decoration:none}
header nav a.on{background:#1c2333;color:#fff}
header form{margin:0}
button{font:inherit;border:1px solid #cfd5df;background:#fff;border-radius:6px;padding:5px 11px}
main{padding:22px 28px;display:grid;gap:18px;grid-template-columns:1fr 1fr;max-width:1500px}
.kpis{grid-column:1/-1;display:grid;grid-template-columns:repeat(6,1fr);gap:14px}
.kpi,.card{background:#fff;border:1px solid #e3e7ee;border-radius:10px}
.kpi{padding:14px 16px}
.kpi .label{color:#667085;font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.kpi .value{font-size:26px;font-weight:600;margin-top:2px;white-space:nowrap}
.kpi .value small{font-size:14px;font-weight:500;color:#667085}
.kpi .note{color:#667085;font-size:12px}
.card{padding:16px 18px}
.card h2{font-size:14px;margin:0 0 10px;color:#344}
.wide{grid-column:1/-1}
.chart{width:100%;height:auto;font-size:11px;fill:#6b7485}
table{width:100%;border-collapse:collapse}
th,td{padding:6px 8px;text-align:right;white-space:nowrap}
th{font-size:12px;color:#667085;font-weight:500;border-bottom:1px solid #e3e7ee}
td{border-bottom:1px solid #f0f2f6;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{text-align:left}
td.bar{background:linear-gradient(90deg,#e8effd var(--w),transparent var(--w))}
.empty{color:#8a94a6;padding:8px 0}
footer{padding:0 28px 24px;color:#8a94a6;font-size:12px}
.login{max-width:360px;margin:12vh auto;background:#fff;border:1px solid #e3e7ee;
  border-radius:10px;padding:26px}
.login input{width:100%;font:inherit;padding:8px 10px;margin:10px 0 14px;border:1px solid #cfd5df;
  border-radius:6px}
.error{color:#b42318}
"""


def amount(text: str) -> str:
    """An exact decimal with thousands separators: 2273.94 -> 2,273.94."""
    whole, dot, fraction = text.partition(".")
    return f"{int(whole):,}{dot}{fraction}"


def number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2%}"
    if isinstance(value, dict):  # revenue per currency
        return ", ".join(f"{amount(v)} {escape(k)}".strip() for k, v in value.items()) or "0"
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def money_html(revenue: dict[str, str]) -> str:
    """Revenue for a tile: the amounts large, the currencies small."""
    parts = [f"{amount(v)} <small>{escape(k)}</small>" for k, v in revenue.items()]
    return "<br>".join(parts) or "0"


def document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def login_page(error: str = "") -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return document(
        "Beacon dashboard: sign in",
        '<form class="login" method="post" action="/dashboard/login"><h1>Beacon</h1>'
        f"{message}<label for=token>Dashboard token</label>"
        "<input id=token name=token type=password autocomplete=current-password required autofocus>"
        "<button type=submit>Sign in</button></form>",
    )


def kpi(key: str, label: str, value: str, note: str = "") -> str:
    return (
        f'<div class="kpi" data-kpi="{key}"><div class="label">{label}</div>'
        f'<div class="value">{value}</div><div class="note">{note}</div></div>'
    )


def table(
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
    key: str,
    bar: str,
    blank: str = "(none)",
) -> str:
    """A table of `columns` (field, heading); the `bar` field shades its cell by share;
    `blank` stands for an empty id."""
    if not rows:
        return '<p class="empty">nothing in this range</p>'
    top = max((r.get(bar) or 0 for r in rows), default=0) or 1
    head = "".join(f"<th>{escape(h)}</th>" for _, h in columns)
    body = []
    for row in rows:
        cells = []
        for field, _ in columns:
            share = f' class="bar" style="--w:{100 * (row.get(field) or 0) / top:.0f}%"' if (
                field == bar) else ""  # fmt: skip
            text = number(row.get(field)) if row.get(field) != "" else blank
            cells.append(f'<td data-field="{field}"{share}>{text}</td>')
        body.append(f'<tr data-{key}="{escape(str(row.get(key, "")))}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def dashboard_page(data: dict[str, Any], days: int) -> str:
    t, s, labels = data["totals"], data["series"], data["labels"]
    short = [label[5:] for label in labels]  # without the year
    nav = "".join(
        f'<a href="?days={n}"{" class=on" if n == days else ""}>{name}</a>' for name, n in RANGES
    )
    revenue = money_html(t["revenue"])
    kpis = "".join([
        kpi("opens", "Opens", number(t["opens"]), f"{number(t['machine_opens'])} by machines"),
        kpi("clicks", "Clicks", number(t["human_clicks"]), f"{number(t['clicks'])} in all"),
        kpi("conversions", "Conversions", number(t["conversions"])),
        kpi("revenue", "Revenue", revenue),
        kpi("pageviews", "Page views", number(t["pageviews"])),
        kpi("visitors", "Visitors", number(t["unique_visitors"]), "unique, per site"),
    ])  # fmt: skip
    trend = line_chart("Opens, clicks and conversions", short, [
        ("human opens", BLUE, s["human_opens"]), ("human clicks", GREEN, s["human_clicks"]),
        ("conversions", AMBER, s["conversions"]),
    ])  # fmt: skip
    machines = stacked_bars("Human and machine opens", short, [
        ("human", BLUE, s["human_opens"]), ("machine", GREY, s["machine_opens"]),
    ])  # fmt: skip
    campaigns = table(data["campaigns"], [
        ("campaign", "Campaign"), ("sent", "Sent"), ("unique_opens", "Opened"),
        ("machine_opens", "Machine opens"), ("unique_clicks", "Clicked"), ("ctr", "CTR"),
        ("click_to_open_rate", "Click-to-open"), ("conversions", "Conversions"),
        ("revenue", "Revenue"),
    ], "campaign", "unique_opens")  # fmt: skip
    pages = table(data["pages"], [
        ("url_path", "Page"), ("url_host", "Host"), ("pageviews", "Views"),
        ("unique_visitors", "Visitors"), ("scroll_75", "Read to 75%"),
    ], "url_path", "pageviews")  # fmt: skip
    referrers = table(data["referrers"], [
        ("referrer_host", "Referrer"), ("site", "Site"), ("pageviews", "Views"),
        ("unique_visitors", "Visitors"),
    ], "referrer_host", "pageviews", "(direct)")  # fmt: skip
    w = data["window"]
    body = f"""
<header><h1>Beacon</h1><span>{escape(w["start"])} to {escape(w["end"])} UTC</span>
<nav>{nav}</nav><form method="post" action="/dashboard/logout"><button>Sign out</button></form>
</header>
<main>
<section class="kpis">{kpis}</section>
<section class="card"><h2>Opens, clicks and conversions per {w["group"]}</h2>{trend}</section>
<section class="card"><h2>Human and machine opens per {w["group"]}</h2>{machines}</section>
<section class="card wide"><h2>Campaigns</h2>{campaigns}</section>
<section class="card"><h2>Top pages</h2>{pages}</section>
<section class="card"><h2>Top referrers</h2>{referrers}</section>
</main>
<footer>Read-only. From the rollups, and raw events where a rollup cannot answer; machine opens
include Apple Mail Privacy Protection, bots and link scanners.</footer>"""
    return document("Beacon dashboard", body)
