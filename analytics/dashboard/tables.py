"""The dashboard's tables: figures formatted by kind, and each row a link that filters the
page by the row's keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from analytics.dashboard.filters import BLANKS, ID_KEYS, Selection


def amount(text: str) -> str:
    """An exact decimal with thousands separators: 2273.94 -> 2,273.94."""
    whole, dot, fraction = text.partition(".")
    return f"{int(whole):,}{dot}{fraction}"


def duration(seconds: float) -> str:
    """A visit's length: 42s, 3m 05s, 1h 02m."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def number(value: Any, kind: str = "count") -> str:
    """A figure as the page shows it: count, rate (two decimals), pct (one), ratio,
    duration (seconds), or revenue per currency."""
    if value is None:
        return "-"
    if isinstance(value, dict):  # revenue per currency
        return ", ".join(f"{amount(v)} {escape(k)}".strip() for k, v in value.items()) or "0"
    if kind == "rate" or (kind == "count" and isinstance(value, float)):
        return f"{value:.2%}"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "ratio":
        return f"{value:,.2f}"
    if kind == "duration":
        return duration(value)
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def money_html(revenue: dict[str, str]) -> str:
    """Revenue for a tile: the amounts large, the currencies small."""
    parts = [f"{amount(v)} <small>{escape(k)}</small>" for k, v in revenue.items()]
    return "<br>".join(parts) or "0"


@dataclass(frozen=True)
class Column:
    """A table column: the row's field, its heading, how its figures read."""

    field: str
    heading: str
    kind: str = "count"


def key_text(key: str, value: Any) -> str:
    if value == "" or value is None:
        return BLANKS.get(key, "(none)")
    return str(value)


def link_for(row: dict[str, Any], keys: Sequence[str], selection: Selection) -> str | None:
    """The page filtered by this row's keys; None when a key cannot filter (an empty id)."""
    pairs = [(k, str(row.get(k, ""))) for k in keys]
    if any(k in ID_KEYS and not v for k, v in pairs):
        return None
    return selection.href(add=pairs)


def table(
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    columns: Sequence[Column],
    selection: Selection,
    bar: str,
) -> str:
    """The rows' `keys` (the first linking to the page filtered by all of them), then
    `columns`; the `bar` column shades its cell by its share of the largest."""
    if not rows:
        return '<p class="empty">nothing in this range</p>'
    top = max((r.get(bar) or 0 for r in rows), default=0) or 1
    head = "".join(f'<th class="key">{escape(HEADINGS.get(k, k))}</th>' for k in keys)
    head += "".join(f"<th>{escape(c.heading)}</th>" for c in columns)
    body = []
    for row in rows:
        link = link_for(row, keys, selection)
        cells = []
        for i, key in enumerate(keys):
            text = escape(key_text(key, row.get(key)))
            inner = f'<a href="{escape(link)}">{text}</a>' if link and i == 0 else text
            muted = " muted" if row.get(key) in ("", None) else ""
            # The first key's cell is shaded by the row's share of the largest `bar` figure.
            shade = f' style="--w:{100 * (row.get(bar) or 0) / top:.1f}%"' if i == 0 else ""
            cells.append(f'<td class="key{muted}" title="{text}"{shade}>{inner}</td>')
        cells += [f'<td data-field="{c.field}">{number(row.get(c.field), c.kind)}</td>'
                  for c in columns]  # fmt: skip
        data = "".join(f' data-{k.replace("_", "-")}="{escape(str(row.get(k, "")))}"' for k in keys)
        pick = ' class="pick"' if link else ""
        body.append(f"<tr{pick}{data}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


HEADINGS = {
    "site": "Site", "campaign": "Campaign", "ad": "Ad", "source": "Source",
    "referrer_host": "Referrer", "utm_source": "Source", "utm_medium": "Medium",
    "utm_campaign": "Campaign", "country": "Country", "device_type": "Device",
    "browser": "Browser", "os": "OS", "page": "Page", "entry_page": "Entry page",
    "exit_page": "Exit page", "goal": "Goal",
}  # fmt: skip
