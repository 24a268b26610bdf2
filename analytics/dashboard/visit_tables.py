"""Several of visit_rows' tables in one scan of the visits: a GROUPING SETS query over
analytics/web.py's own visit rows, filters and figures, so each table equals its visit_rows
call (the integration tests compare them) for half the time or less of one query each."""

from __future__ import annotations

import graphlib
import itertools
from typing import Any

from analytics.funnel import Query, rows
from analytics.views import Request
from analytics.web import column_of, derived_sql, figures, filter_sql, stored_days, visits_sql

# What a row adds up; analytics/web.py figures() makes the rates of them.
SUMS = ("visitors", "visits", "pageviews", "bounces", "duration_ms")


def key_columns(key_sets: list[tuple[str, ...]]) -> list[str]:
    """Every key of `key_sets`, each set's keys in the set's own order: sorted by them all,
    a set's rows are sorted by its keys (the others hold one default value in its rows)."""
    before: dict[str, set[str]] = {k: set() for keys in key_sets for k in keys}
    for keys in key_sets:
        for first, then in itertools.pairwise(keys):
            before[then].add(first)
    return list(graphlib.TopologicalSorter(before).static_order())


def grouped_sql(asked: Request, source: str, key_sets: list[tuple[str, ...]]) -> str:
    """visit_rows' SQL for several `key_sets` at once: one GROUPING SETS query over the
    visits, each set's rows told by `grouping_mask`, its top `limit` kept."""
    columns = key_columns(key_sets)
    exprs = [column_of(k) for k in columns]
    sets = ", ".join("(" + ", ".join(column_of(k) for k in keys) + ")" for keys in key_sets)
    return f"""
SELECT grouping({", ".join(exprs)}) AS grouping_mask,
       {", ".join(f"{e} AS {k}" for e, k in zip(exprs, columns, strict=True))},
       uniqExact(visitor_id) AS visitors, count() AS visits, sum(pageviews) AS pageviews,
       sum(bounce) AS bounces, sum(duration_ms) AS duration_ms
FROM ({source})
WHERE {filter_sql(asked.filters)}
GROUP BY GROUPING SETS ({sets})
ORDER BY grouping_mask, visits DESC, {", ".join(columns)}
LIMIT {int(asked.limit)} BY grouping_mask"""


def grouped_rows(
    query: Query, asked: Request, key_sets: list[tuple[str, ...]]
) -> list[list[dict[str, Any]]]:
    """visit_rows(query, asked, keys) for each of `key_sets` (no "page", no group), reading
    the visits once."""
    columns = key_columns(key_sets)
    source = derived_sql(asked, visits_sql(asked, stored_days(query, asked)))
    found: dict[int, list[dict[str, Any]]] = {}
    for row in rows(query, grouped_sql(asked, source, key_sets)):
        found.setdefault(row["grouping_mask"], []).append(row)
    out = []
    for keys in key_sets:
        # grouping() has a bit per column, the first the highest, 1 where the set does not
        # group by it (the SQL standard's rule: force_grouping_standard_compatibility, on by
        # default since ClickHouse 22.9).
        mask = sum(1 << (len(columns) - 1 - i) for i, k in enumerate(columns) if k not in keys)
        out.append([
            figures({**{k: row[k] for k in keys}, **{f: row[f] for f in SUMS}})
            for row in found.get(mask, []) if row["visits"]
        ])  # fmt: skip
    return out
