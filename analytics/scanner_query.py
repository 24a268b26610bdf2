"""The link-scanner rule for reports over the rollups: what it adds to per-row flags.

The rule (analytics/machine_opens.py) needs each recipient's clicks in time order, which no
rollup keeps, so this reads raw events; only clicks, then the opens and clicks of the people
whose clicks formed a burst. It reads the rule's SQL (`scanner_candidates_sql`,
`scanner_bursts_sql`) without FINAL: a replayed click repeats a time and a link, which
changes no burst; the counts that a replay would change count event ids instead. It runs in
steps: the candidate clicks first (usually none, or a few thousand), then the send times
and the opens and clicks of just those people, named in the statement.

The raw path (analytics/raw_query.py) reads the same bursts with FINAL; the tests hold both
paths to the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from analytics.machine_opens import (
    SCANNER_MAX_AFTER_SEND_S,
    SCANNER_WINDOW_MS,
    scanner_bursts_sql,
    scanner_candidates_sql,
)
from analytics.raw_query import FLAGGED, IN_BURST, group_by, inner_keys
from analytics.report_window import sql_string
from analytics.schema import EVENTS

# Beyond this many people with a candidate burst, one statement with subqueries instead of
# their names in SQL (the store port takes statements up to 256 KiB).
MAX_LISTED_PEOPLE = 2000
Fetch = Callable[[str], list[dict[str, Any]]]


def seconds_between(start_ms: int, end_ms: int) -> int:
    """ClickHouse's dateDiff('second', start, end) on DateTime64(3): whole seconds apart."""
    return end_ms // 1000 - start_ms // 1000


def correction(
    fetch: Fetch, where: str, keys: tuple[str, ...], group: str | None, valid: str = "1"
) -> list[dict]:
    """correction_sql's rows, in steps: the candidate clicks; the send times of those people;
    their opens and clicks, counted here. Each step reads little; the people are named in
    the statement (as tuples for IN, which ClickHouse turns into a set). Bursts are found
    among every click; the clicks counted are those under `valid` (Filters.valid over `e.`):
    a scanner's invalid click is left out like any other."""
    found = fetch(scanner_candidates_sql(EVENTS, where))
    people = {(r["message"], r["recipient"]) for r in found}
    if not people:
        return []
    if len(people) > MAX_LISTED_PEOPLE:
        return fetch(correction_sql(where, keys, group, valid))
    sent = {(r["message"], r["recipient"]): r["sent_ms"] for r in fetch(sends_sql(where, people))}
    bursts: dict[tuple[str, str], int] = {}
    for row in found:
        person, t_ms = (row["message"], row["recipient"]), row["t_ms"]
        sent_ms = sent.get(person)
        if sent_ms is None or 0 <= seconds_between(sent_ms, t_ms) <= SCANNER_MAX_AFTER_SEND_S:
            bursts[person] = min(bursts.get(person, t_ms), t_ms)
    if not bursts:
        return []
    per: dict[tuple, dict[str, Any]] = {}
    for row in fetch(people_events_sql(where, set(bursts), group, valid)):
        key = tuple(row[k] for k in ([group] if group else []) + list(keys))
        person = (row["message"], row["recipient"])
        counts = per.setdefault((*key, *person), {"key": key, "burst": set(), "human": set()})
        in_burst = abs(row["t_ms"] - bursts[person]) <= SCANNER_WINDOW_MS
        counts["burst" if in_burst else "human"].add((row["event_type"], row["event_id"]))
    out: dict[tuple, dict[str, Any]] = {}
    for counts in per.values():
        names = [group] if group else []
        fix = out.setdefault(counts["key"], {
            **dict(zip([*names, *keys], counts["key"], strict=True)),
            "machine_opens": 0, "machine_clicks": 0, "unique_human_opens": 0, "unique_clicks": 0,
        })  # fmt: skip
        for kind, unique in (("open", "unique_human_opens"), ("click", "unique_clicks")):
            in_burst = sum(1 for t, _ in counts["burst"] if t == kind)
            fix[f"machine_{kind}s"] += in_burst
            if in_burst and not any(t == kind for t, _ in counts["human"]):
                fix[unique] += 1
    return list(out.values())


def listed(people: set[tuple[str, str]]) -> str:
    return ", ".join(f"({sql_string(m)}, {sql_string(r)})" for m, r in sorted(people))


def sends_sql(where: str, people: set[tuple[str, str]]) -> str:
    return f"""
SELECT message, recipient, toUnixTimestamp64Milli(min(received_at)) AS sent_ms
FROM {EVENTS}
WHERE event_type = 'send' AND ({where}) AND (message, recipient) IN ({listed(people)})
GROUP BY message, recipient"""


def people_events_sql(
    where: str, people: set[tuple[str, str]], group: str | None, valid: str = "1"
) -> str:
    """The unflagged opens and valid clicks of `people` (each stored copy: counted by event
    id), with every key a report may group by: one statement for any grouping."""
    return f"""
SELECT {inner_keys(("site", "campaign", "ad"), group)}e.message AS message,
       e.recipient AS recipient,
       e.event_type AS event_type, toString(e.event_id) AS event_id,
       toUnixTimestamp64Milli(e.received_at) AS t_ms
FROM {EVENTS} AS e
WHERE {where} AND e.event_type IN ('open', 'click') AND NOT {FLAGGED}
  AND (e.event_type = 'open' OR {valid})
  AND (e.message, e.recipient) IN ({listed(people)})"""


def correction_sql(
    where: str, keys: tuple[str, ...] = (), group: str | None = None, valid: str = "1"
) -> str:
    """By (period, *keys): opens and clicks the rule makes machine ones (not flagged
    already), and people it leaves without a human open or click; one statement."""
    names = "".join(k + ", " for k in ([group] if group else []) + list(keys))
    return f"""
WITH bursts AS ({scanner_bursts_sql(EVENTS, where)})
SELECT {names}
    sum(burst_opens) AS machine_opens, sum(burst_clicks) AS machine_clicks,
    countIf(burst_opens > 0 AND human_opens = 0) AS unique_human_opens,
    countIf(burst_clicks > 0 AND human_clicks = 0) AS unique_clicks
FROM (
    SELECT {names}person,
        uniqExactIf(event_id, event_type = 'open' AND in_burst) AS burst_opens,
        countIf(event_type = 'open' AND NOT in_burst) AS human_opens,
        uniqExactIf(event_id, event_type = 'click' AND in_burst) AS burst_clicks,
        countIf(event_type = 'click' AND NOT in_burst) AS human_clicks
    FROM (
        SELECT {inner_keys(keys, group)}e.event_type AS event_type, e.event_id AS event_id,
               concat(e.message, char(0), e.recipient) AS person, {IN_BURST} AS in_burst
        FROM {EVENTS} AS e
        INNER JOIN bursts AS b ON e.message = b.message AND e.recipient = b.recipient
        WHERE {where} AND e.event_type IN ('open', 'click') AND NOT {FLAGGED}
          AND (e.event_type = 'open' OR {valid})
    )
    GROUP BY {names}person
)
{group_by(keys, group)}
"""
