"""`beacon report`: counts by day, campaign and event type, from the store."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Sequence

import orjson

from consumers.schema import EVENTS
from consumers.settings import ConsumerSettings
from consumers.writers import StoreError

COLUMNS = ("day", "site", "campaign", "event_type", "events", "visitors", "recipients")


class StoreUnavailable(Exception):
    """Neither the store's query port nor its data directory could be reached."""


def sql_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def report_sql(days: int, site: str | None = None, campaign: str | None = None) -> str:
    where = [f"received_at >= now() - INTERVAL {int(days)} DAY"]
    if site is not None:
        where.append(f"site = {sql_string(site)}")
    if campaign is not None:
        where.append(f"campaign = {sql_string(campaign)}")
    # FINAL: rows replayed with another insert token are counted once (see schema.py).
    return f"""
SELECT toString(toDate(received_at)) AS day, site, campaign, event_type,
       count() AS events,
       uniqExactIf(visitor_id, visitor_id != 0) AS visitors,
       uniqExactIf(recipient, recipient != '') AS recipients
FROM {EVENTS} FINAL
WHERE {" AND ".join(where)}
GROUP BY day, site, campaign, event_type
ORDER BY day, site, campaign, event_type
SETTINGS output_format_json_quote_64bit_integers = 0
"""


def run_query(settings: ConsumerSettings, sql: str, fmt: str = "JSONEachRow") -> str:
    """Ask ClickHouse when a URL is set; else the process that owns the embedded store, and
    with none running, open that store here."""
    if settings.clickhouse_url:
        return asyncio.run(query_server(settings, sql, fmt))
    url = f"http://{settings.store_host}:{settings.store_port}/query?format={fmt}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=sql.encode()), timeout=30
        ) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:
        raise StoreError(exc.read().decode(errors="replace")) from None
    except (urllib.error.URLError, ConnectionError):
        pass  # nobody serves the store: it is ours to open
    if not settings.store_dir.exists():
        raise StoreUnavailable(f"no store at {settings.store_dir}: run `beacon run` first")
    from consumers.writers.chdb import ChdbWriter

    writer = ChdbWriter(settings.store_dir)
    try:
        return writer.query_sync(sql, fmt)
    finally:
        writer._close()


async def query_server(settings: ConsumerSettings, sql: str, fmt: str) -> str:
    """One query over HTTP, through the consumers' own writer (same auth, errors, timeouts)."""
    from consumers.writers.http import HttpWriter

    writer = HttpWriter(
        settings.clickhouse_url, settings.clickhouse_user, settings.clickhouse_password
    )
    try:
        return await writer.query(sql, fmt)
    finally:
        await writer.close()


def fetch_report(
    settings: ConsumerSettings, days: int, site: str | None, campaign: str | None
) -> list[dict]:
    text = run_query(settings, report_sql(days, site, campaign))
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def format_table(rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> str:
    """A plain aligned table for a terminal; numbers right-aligned."""
    if not rows:
        return "no events in this range\n"
    cells = [[str(row[c]) if row[c] != "" else "-" for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [isinstance(rows[0][c], int | float) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    total = sum(int(row["events"]) for row in rows)
    out.append(f"\n{total} events")
    return "\n".join(out) + "\n"
