"""`beacon report`: where its queries go, and how its rows are printed.

The views themselves are in analytics/views.py (and the one-campaign funnel in
analytics/campaign_report.py); both read the rollups unless told `--source raw`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import orjson

from analytics.settings import StoreSettings
from analytics.store import StoreError
from contract import owner

JSON = {"Content-Type": "application/json"}
COLUMNS = ("day", "site", "campaign", "event_type", "events", "visitors", "recipients")
FORMATS = ("table", "json", "csv")
# What starts a formula in Excel, LibreOffice and Google Sheets:
# https://owasp.org/www-community/attacks/CSV_Injection
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class StoreUnavailable(Exception):
    """Neither the store's query port nor its data directory could be reached."""


def run_query(
    settings: StoreSettings, sql: str, fmt: str = "JSONEachRow", command: str = "beacon report"
) -> str:
    """Ask ClickHouse when a URL is set; else the process that owns the data directory's
    embedded store, through its store port; and with none, open that store here."""
    if settings.clickhouse_url:
        return asyncio.run(query_server(settings, sql, fmt))
    found = owner.owner(settings.data_dir, owner.CONSUMER)
    if found is not None:
        return ask_owner(settings, found, sql, fmt)
    if not settings.store_dir.exists():
        raise StoreUnavailable(f"no store at {settings.store_dir}: run `beacon run` first")
    from analytics.store.chdb import ChdbWriter

    with owner.holding(settings.data_dir, owner.CONSUMER, command):
        writer = ChdbWriter(settings.store_dir)
        try:
            return writer.query_sync(sql, fmt)
        finally:
            writer.close_sync()


def owner_url(settings: StoreSettings, found: owner.Owner) -> str:
    """The store port of the process holding the data directory's store, or why there is none."""
    if not found.store_url:
        raise StoreUnavailable(f"{settings.data_dir}/ is in use by {found}: try again after it")
    return found.store_url


def ask_owner(settings: StoreSettings, found: owner.Owner, sql: str, fmt: str) -> str:
    url = owner_url(settings, found)
    body = orjson.dumps({"sql": sql, "format": fmt})
    request = urllib.request.Request(f"{url}/query", data=body, headers=JSON)
    try:
        # The store stops a read at its own limit; this one only covers a port that hangs.
        with urllib.request.urlopen(request, timeout=settings.store_query_timeout_s + 30) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:
        raise StoreError(exc.read().decode(errors="replace")) from None
    except (urllib.error.URLError, ConnectionError):
        raise not_answering(settings, found, url) from None


def not_answering(settings: StoreSettings, found: owner.Owner, url: str) -> StoreUnavailable:
    return StoreUnavailable(
        f"{settings.data_dir}/ is in use by {found}, whose store port {url} does not answer "
        "(still starting?): try again in a moment"
    )


async def query_server(settings: StoreSettings, sql: str, fmt: str) -> str:
    """One query over HTTP, through the consumers' own writer (same auth, errors, timeouts)."""
    from analytics.store.http import HttpWriter
    from analytics.store.readers import READ_FORMAT_SETTINGS

    writer = HttpWriter(
        settings.clickhouse_url, settings.clickhouse_user, settings.clickhouse_password,
        compression=settings.clickhouse_compression,
    )  # fmt: skip
    try:
        return await writer.query(sql, fmt, READ_FORMAT_SETTINGS)
    finally:
        await writer.close()


def cell(value: Any) -> str:
    """A figure as a terminal table shows it (the views' and the campaign report's)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, dict):  # revenue per currency
        return ", ".join(f"{v} {k}".strip() for k, v in value.items()) or "0"
    if isinstance(value, float):  # a rate
        return f"{value:.2%}"
    return str(value)


def csv_cell(value: Any) -> str:
    """A figure for a spreadsheet: numbers as numbers, revenue as `12.50 EUR; 3.00 USD`, and
    no text a spreadsheet would run as a formula."""
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        text = "; ".join(f"{v} {k}".strip() for k, v in value.items())
    else:
        text = str(value)
    # Campaign, page and site names come from anyone who can load a pixel: a leading quote
    # makes a cell that starts like a formula plain text (OWASP, CSV Injection).
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def format_table(rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> str:
    """A plain aligned table for a terminal; numbers right-aligned."""
    if not rows:
        return "no events in this range\n"
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [any(isinstance(row.get(c), int | float | dict) for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    if "events" in columns and "event_type" in columns:
        total = sum(int(row["events"]) for row in rows)
        out.append(f"\n{total} events")
    return "\n".join(out) + "\n"


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """`rows` as a terminal table (the `columns`), JSON (everything) or CSV (everything)."""
    if fmt == "json":
        return orjson.dumps(list(rows), option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        out = io.StringIO()
        header = list(rows[0]) if rows else list(columns)
        # RFC 4180's CRLF: a cell holding either character is then quoted, not split.
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([csv_cell(row.get(c)) for c in header])
        return out.getvalue()
    return format_table(rows, columns)
