"""How fast reports answer over many events: from the rollups, and from raw events.

    python -m loadtest.bench_reports [--events 10000000] [--days 30] [--rounds 3] [--keep DIR]

Builds a store in chDB with the consumers' own migrations, fills it with an INSERT ... SELECT
from numbers() (web traffic with scroll depth and referrers, email campaigns with Apple MPP,
bots, Gmail's proxy and link scanners, ad campaigns, orders with reloads), so the views fill
the rollups as they would in production; settles every ended day as the consumer would; then
times each `beacon report` view both ways (best of --rounds) and checks they agree. Prints a
table; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analytics.campaign_report import campaign_report
from analytics.migrations import migrate
from analytics.report_window import Window
from analytics.rollup_settle import Settler
from analytics.rollups import ROLLUPS
from analytics.schema import EVENTS
from analytics.store.chdb import ChdbWriter
from analytics.views import Request, view_rows


def at_sql(n: str) -> str:
    """The time of row `n`: spread over the days, busier in the afternoon than at night."""
    day = f"({n} * {{days}} / {{events_n}})"
    u = f"({day} - floor({day}))"
    return (
        f"toDateTime64(now() - INTERVAL {{days}} DAY, 3, 'UTC') + toIntervalMillisecond("
        f"toInt64((floor({day}) + {u} - 0.07 * sin(2 * pi() * {u})) * 86400000))"
    )


def uuid_sql(n: str) -> str:
    """A UUIDv7 made of row `n`'s time and number: a conversion can name the click of
    another row."""
    hx = (
        f"concat(leftPad(lower(hex(toUnixTimestamp64Milli({at_sql(n)}))), 12, '0'), '7', "
        f"leftPad(lower(hex({n} % 4096)), 3, '0'), '8', leftPad(lower(hex({n})), 15, '0'))"
    )
    name = f"hex_{n}"
    spans = [f"substr(({hx}) AS {name}, 1, 8)"]
    spans += [f"substr({name}, {a}, {b})" for a, b in ((9, 4), (13, 4), (17, 4), (21, 12))]
    dash = ", '-', "
    return f"toUUID(concat({dash.join(spans)}))"


# One row per event; every choice is a hash of the row number, so a run is repeatable.
# In each block of 10,000 rows: page views, engagement (scroll depth), sends, opens (a
# quarter Apple MPP or bots, a tenth through Gmail's proxy), email clicks (the first three
# a link scanner's burst), ad impressions and clicks, orders (naming a click of the block,
# some ids repeated), custom events.
GENERATE = """
INSERT INTO {events} (schema_version, event_id, received_at, event_type, site, campaign,
  message, recipient, ad, url_host, url_path, referrer, props, user_agent, ip, visitor_id,
  verified, click_id, order_id, value, currency, machine_open, machine_reason, mail_proxy,
  is_bot, consent, transport)
SELECT 2, event_id, t, kind, site, campaign, message, recipient, ad, url_host, url_path,
  referrer, props, 'Mozilla/5.0 (X11; Linux x86_64)', '203.0.113.0', visitor_id, verified,
  multiIf(kind = 'click', toString(event_id), kind = 'conversion' AND h1 % 5 != 0,
          toString(CLICK_UUID), ''), order_id, value, currency, machine_open,
  if(machine_open, if(is_bot, 'bot_user_agent', 'apple_mpp'), ''), mail_proxy, is_bot,
  'not_required', 'pixel'
FROM (
  SELECT number AS n, n % 10000 AS slot, cityHash64(n, 1) AS h1, cityHash64(n, 2) AS h2,
    AT_N AS t, UUID_N AS event_id,
    -- the click an order names: an ad click of its block, or an email click
    n - slot + if(h1 % 2 = 0, 9850 + n % 50, 9103 + n % 147) AS click_n,
    multiIf(slot < 4500, 'pageview', slot < 7500, 'engagement', slot < 8500, 'send',
            slot < 9100, 'open', slot < 9250, 'click', slot < 9850, 'impression',
            slot < 9900, 'click', slot < 9950, 'conversion', 'custom') AS kind,
    slot >= 7500 AND slot < 9250 AS email, slot >= 9250 AND slot < 9900 AS advert,
    multiIf(email OR kind = 'conversion', 'shop', advert, 'news',
            ['blog', 'news', 'docs', 'shop'][1 + h1 % 4]) AS site,
    -- a scanner's three clicks (rows in a row) are on one message
    if(slot >= 9100 AND slot < 9103, intDiv(n, 10000) % 20, h2 % 20) AS c,
    multiIf(email, concat('mail-', toString(c)), advert, concat('fall-', toString(c % 10)), '')
      AS campaign,
    if(email, concat('m-', toString(c)), '') AS message,
    -- three clicks in a row (0.26 s apart) on every link: a link scanner's burst
    multiIf(slot >= 9100 AND slot < 9103, concat('scan-', toString(intDiv(n, 10000))),
            email, concat('u-', toString(cityHash64(n, 3) % 50000)), '') AS recipient,
    if(advert, concat('banner-', toString(h1 % 4)), '') AS ad,
    multiIf(kind IN ('pageview', 'engagement', 'custom'), concat(site, '.example'),
            kind = 'click', 'shop.example', '') AS url_host,
    multiIf(kind IN ('pageview', 'engagement'),
            concat('/p/', toString(toUInt32(pow((h1 % 1000000) / 1e6, 3) * 500))),
            kind = 'click', concat('/l', toString(if(slot < 9103, slot - 9100, h1 % 3))), '')
      AS url_path,
    if(kind = 'pageview' AND h1 % 2 = 0,
       concat('https://ref', toString(h2 % 40), '.example/'), '') AS referrer,
    if(kind = 'engagement', map('scroll_pct', toString(h2 % 101)), map()) AS props,
    -- about three page views per visitor and day (ids rotate daily)
    if(kind IN ('pageview', 'engagement', 'custom') OR advert,
       cityHash64(toDate(t), site, cityHash64(n, 7) % {visitors_per_day}) + 1, 0) AS visitor_id,
    toUInt8(kind != 'send') AS verified,
    if(kind = 'conversion', concat('o-', toString(cityHash64(n, 9) % {orders})), '') AS order_id,
    if(kind = 'conversion', toDecimal64(h2 % 20000, 4) / 100, toDecimal64(0, 4)) AS value,
    if(kind = 'conversion', ['EUR', 'USD'][1 + h1 % 2], '') AS currency,
    toUInt8(kind = 'open' AND h1 % 4 = 0) AS machine_open,
    multiIf(machine_open, 'apple', kind = 'open' AND h1 % 10 = 1, 'gmail', '') AS mail_proxy,
    toUInt8(h2 % 100 = 7) AS is_bot
  FROM numbers({events_n})
)
SETTINGS max_insert_block_size = 100000, min_insert_block_size_rows = 100000
"""


def timed(label: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = work()
    print(f"{label:<44} {time.perf_counter() - started:8.1f} s", flush=True)
    return result


def reports(window: Window) -> dict[str, Callable[[Callable[[str], str], str], Any]]:
    """Every report `beacon report` has, as (query, source) -> rows."""

    def view(name: str, **extra: Any) -> Callable[[Callable[[str], str], str], Any]:
        return lambda query, source: view_rows(query, Request(name, window, source=source, **extra))

    return {
        "campaign view (all campaigns)": view("campaign"),
        "campaign view, by day": view("campaign", group="day"),
        "ad view": view("ad"),
        "site view": view("site"),
        "pages, top 20": view("pages"),
        "referrers, top 20": view("referrers"),
        "events by day, site, campaign, type": view("events", group="day"),
        "one email campaign (--campaign)": lambda q, s: campaign_report(
            q, "mail-3", window=window, source=s
        ),
        "one ad campaign, by ad (--campaign)": lambda q, s: campaign_report(
            q, "fall-3", window=window, source=s
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the store here and keep it")
    args = parser.parse_args()
    path = args.keep or Path(tempfile.mkdtemp(prefix="beacon-bench-reports-"))
    shutil.rmtree(path, ignore_errors=True)
    writer = ChdbWriter(path)
    try:
        run(writer, args)
    finally:
        writer._close()
        if args.keep is None:
            shutil.rmtree(path, ignore_errors=True)


def run(writer: ChdbWriter, args: argparse.Namespace) -> None:
    n = args.events
    timed("migrate (events table, rollups, views)", lambda: asyncio.run(migrate(writer, 0)))
    template = (
        GENERATE.replace("AT_N", at_sql("n"))
        .replace("UUID_N", uuid_sql("n"))
        .replace("CLICK_UUID", uuid_sql("click_n"))
    )
    sql = template.format(
        events=EVENTS, days=args.days, events_n=n,
        visitors_per_day=max(10, n // 800), orders=max(10, n * 9 // 2000),
    )  # fmt: skip
    timed(f"insert {n:,} events (views fill the rollups)", lambda: writer.query_sync(sql, "TSV"))
    # As the consumer's settler does once a day has ended (nothing inserts meanwhile).
    settler = Settler(writer, insert_margin_s=-5)
    days = timed("settle every ended day", lambda: asyncio.run(settler.settle_due()))
    print(f"  {len(days)} days settled")
    print(writer.query_sync(
        "SELECT table, sum(rows) AS rows, formatReadableSize(sum(bytes_on_disk)) AS size "
        "FROM system.parts WHERE active AND database = 'beacon' "
        f"AND table IN ('events', {', '.join(repr(r.name) for r in ROLLUPS)}) "
        "GROUP BY table ORDER BY table", "PrettyCompactMonoBlock",
    ))  # fmt: skip
    window = Window.last_days(args.days + 1, dt.datetime.now(dt.UTC))
    print(f"{'report':<40} {'rollups':>9} {'raw':>9}  statements (rollups/raw)")
    for label, report in reports(window).items():
        best: dict[str, float] = {}
        answers: dict[str, Any] = {}
        statements: dict[str, int] = {}
        for source in ("rollup", "raw"):
            for _ in range(args.rounds):
                count = [0]

                def query(sql: str, count: list[int] = count) -> str:
                    count[0] += 1
                    return writer.query_sync(sql, "JSONEachRow")

                started = time.perf_counter()
                answers[source] = report(query, source)
                elapsed = time.perf_counter() - started
                best[source] = min(best.get(source, elapsed), elapsed)
                statements[source] = count[0]
        same = "" if answers["rollup"] == answers["raw"] else "  DIFFERENT ANSWERS"
        print(
            f"{label:<40} {best['rollup']:8.3f}s {best['raw']:8.3f}s  "
            f"{statements['rollup']}/{statements['raw']}{same}"
        )


if __name__ == "__main__":
    main()
