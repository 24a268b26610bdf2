"""Campaign and ad counts from either source, grouped by any of campaign, ad, site, period.

`rollup` (the default) reads the rollups (analytics/rollup_query.py) and adds what only raw
events can tell: the scanner rule's machine opens and clicks. `raw` reads everything from
`events FINAL` (analytics/raw_query.py). Both give the same numbers; the tests check it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from analytics import raw_query, rollup_query, scanner_query
from analytics.duplicate_clicks import duplicate_clicks_sql
from analytics.report_window import Filters, Window, bucket, sql_string
from analytics.rollups import SETTLING
from analytics.store import json_rows

# Runs one query and returns its JSONEachRow text: the store's query port, ClickHouse over
# HTTP, or a test's own chDB session.
Query = Callable[[str], str]
SOURCES = ("rollup", "raw")
FUNNEL_TYPES = "event_type IN ('send', 'open', 'click', 'impression')"
COUNTS = (
    "sent_events",
    "impressions",
    "invalid_impressions",
    "opens",
    "machine_opens",
    "proxied_opens",
    "unique_opens",
    "unique_human_opens",
    "clicks",
    "machine_clicks",
    "unique_clicks",
    "invalid_clicks",
)
Key = tuple[str, ...]


def rows(query: Query, sql: str) -> list[dict[str, Any]]:
    # Counts arrive as JSON numbers: every reader sets output_format_json_quote_64bit_integers
    # to 0 (analytics/store/readers.py READ_FORMAT_SETTINGS).
    return json_rows(query(sql))


def memo(query: Query) -> Query:
    """`query` answering a repeated statement from memory: one report asks some twice (the
    scanner rule's steps for the total and per ad)."""
    answers: dict[str, str] = {}

    def remembered(sql: str) -> str:
        if sql not in answers:
            answers[sql] = query(sql)
        return answers[sql]

    return remembered


# Every settling mark (analytics/rollup_settle.py), folded into one number that any new mark
# changes (and a merge of the marks' table too: then a report is read once more for nothing).
MARKS_SQL = f"SELECT groupBitXor(sipHash64(day, done, at)) AS marks, count() AS n FROM {SETTLING}"
REPORT_TRIES = 3
Report = TypeVar("Report")


def steady(
    query: Query, source: str, report: Callable[[], Report], window: Window | None = None
) -> Report:
    """`report()`, read again when a day was marked while it ran. A report reads its plan
    (plan_for) and then its statements: a settling run, or an erasure's rebuild, that began
    in between swapped a day's rollups under statements the plan sent to them. Each run
    marks its day before it swaps, so a report that met none reads the same marks after.
    Nor does a copy of an event mark anything (a replay's, under a fresh token): stored on a
    settled day after the plan, its live row added its id to the day's sums in the report.
    So the days the plan for `window` reads from raw events are read again too."""
    if source == "raw":
        return report()
    for _ in range(REPORT_TRIES):  # a day's run is seconds: the next read meets none
        before = _state(query, window)
        out = report()
        if _state(query, window) == before:
            break
    return out


def _state(query: Query, window: Window | None) -> list[Any]:
    """The settling marks, and the days a report of `window` cannot read from rollups."""
    state: list[Any] = rows(query, MARKS_SQL)
    if window is not None:
        planned = rows(query, rollup_query.plan_sql(window))
        state.append(sorted((row["name"], row["day"]) for row in planned))
    return state


def plan_for(query: Query, window: Window, source: str) -> rollup_query.Plan:
    """Where the report's rows come from: raw events only, or rollups but for the days they
    cannot answer (one small query over the rollups' flags)."""
    if source == "raw":
        return rollup_query.RAW
    return rollup_query.plan_from(rows(query, rollup_query.plan_sql(window)))


def names(keys: Sequence[str], group: str | None) -> list[str]:
    return ([group] if group else []) + list(keys)


def key_of(row: dict[str, Any], key_names: Sequence[str]) -> Key:
    return tuple(str(row[k]) for k in key_names)


def funnel_counts(
    query: Query,
    window: Window,
    filters: Filters,
    keys: tuple[str, ...] = (),
    group: str | None = None,
    source: str = "rollup",
    plan: rollup_query.Plan | None = None,
) -> dict[Key, dict[str, int]]:
    """COUNTS by (period, *keys), every machine-open and invalid-traffic rule applied.
    `plan`: plan_for's answer, when the caller has it already."""
    where = f"{raw_query.where_sql(window, filters)} AND {FUNNEL_TYPES}"
    key_names = names(keys, group)
    valid = filters.valid("e.")
    if source == "raw":
        found = rows(query, raw_query.funnel_sql(where, keys, group, valid))
        counts = {key_of(r, key_names): {c: r[c] for c in COUNTS} for r in found}
        return without_duplicates(query, counts, window, filters, keys, group)
    # The rollup's flags are the consumer's per-row rules; the scanner rule needs each
    # recipient's clicks in time order, which only raw events have (it reads clicks only).
    plan = plan or plan_for(query, window, source)
    found = rows(query, rollup_query.funnel_sql(window, filters, keys, group, plan, FUNNEL_TYPES))
    counts = {key_of(r, key_names): {c: r[c] for c in COUNTS} for r in found}
    for fix in scanner_query.correction(partial(rows, query), where, keys, group, valid):
        row = counts.get(key_of(fix, key_names))
        if row is None:  # a burst's events are in the rollup too; nothing to correct
            continue
        row["machine_opens"] += fix["machine_opens"]
        row["machine_clicks"] += fix["machine_clicks"]
        row["unique_human_opens"] -= fix["unique_human_opens"]
        row["unique_clicks"] -= fix["unique_clicks"]
    return without_duplicates(query, counts, window, filters, keys, group)


def without_duplicates(
    query: Query,
    counts: dict[Key, dict[str, int]],
    window: Window,
    filters: Filters,
    keys: tuple[str, ...],
    group: str | None,
) -> dict[Key, dict[str, int]]:
    """`counts` with the duplicate clicks (analytics/duplicate_clicks.py) counted invalid,
    and left out of the clicks unless invalid traffic is included. A duplicate's person
    clicked before: unique clicks stay."""
    if filters.duplicate_click_window_s <= 0:
        return counts
    sql = duplicate_clicks_sql(window, filters, keys, group)
    for found in rows(query, sql):
        row = counts.get(key_of(found, names(keys, group)))
        if row is None:  # every duplicate is a click of the funnel too
            continue
        row["invalid_clicks"] += found["duplicate_clicks"]
        if not filters.include_ivt:
            row["clicks"] -= found["duplicate_clicks"]
    return counts


def conversions_sql(orders: str, filters: Filters, keys: Sequence[str], group: str | None) -> str:
    """Conversions, attributed ones and revenue by key and currency, from one-row-per-order
    SQL (raw_query.orders_sql or rollup_query.orders_sql)."""
    select = [f"{bucket(group, 'hour')} AS {group}"] if group else []
    select += list(keys)
    where = [
        f"{name} = {sql_string(value)}"
        for name, value in (("campaign", filters.campaign), ("ad", filters.ad))
        if value is not None
    ]
    by = ", ".join([*names(keys, group), "currency"])
    return f"""
SELECT {", ".join([*select, "currency"])}, count() AS conversions,
       countIf(attributed) AS attributed, toString(sum(value)) AS revenue
FROM ({orders})
WHERE {" AND ".join(where) or "1"}
GROUP BY {by}
ORDER BY {by}"""


def conversions(
    query: Query,
    window: Window,
    filters: Filters,
    keys: tuple[str, ...] = ("campaign", "ad"),
    group: str | None = None,
    source: str = "rollup",
    plan: rollup_query.Plan | None = None,
) -> dict[Key, list[dict[str, Any]]]:
    """Per key: one row per currency with conversions, attributed, revenue (exact text)."""
    if source == "raw":
        orders = raw_query.orders_sql(window, filters)
    else:
        plan = plan or plan_for(query, window, source)
        orders = rollup_query.orders_sql(window, filters, plan)
    out: dict[Key, list[dict[str, Any]]] = {}
    for row in rows(query, conversions_sql(orders, filters, keys, group)):
        out.setdefault(key_of(row, names(keys, group)), []).append(row)
    return out
