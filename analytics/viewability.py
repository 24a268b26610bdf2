"""Ad viewability figures per campaign or ad: the /a.js tag's measured impressions, those that
became viewable by the MRC rule of their kind, and the rate (docs/tracking.md "Ad
viewability"). From the viewability rollup, or from raw events with the same SQL."""

from __future__ import annotations

from typing import Any

from analytics import rollup_query
from analytics.funnel import Key, Query, key_of, names, plan_for, rows
from analytics.report_window import Filters, Window
from analytics.web import ratio

COUNTS = ("measured_impressions", "viewable_impressions")
FIGURES = (*COUNTS, "viewability_rate")
NONE = dict.fromkeys(COUNTS, 0)


def viewability_counts(
    query: Query,
    window: Window,
    filters: Filters,
    keys: tuple[str, ...],
    group: str | None = None,
    source: str = "rollup",
    plan: rollup_query.Plan | None = None,
) -> dict[Key, dict[str, int]]:
    """COUNTS by (period, *keys)."""
    if source == "raw":
        plan = rollup_query.RAW
    plan = plan or plan_for(query, window, source)
    found = rows(query, rollup_query.viewability_sql(window, filters, keys, group, plan))
    return {key_of(r, names(keys, group)): {c: r[c] for c in COUNTS} for r in found}


def figures(counts: dict[str, int] | None) -> dict[str, Any]:
    """The figures of one row: counts and `viewable / measured` (4 places; None unmeasured)."""
    found = counts or NONE
    measured, viewable = found["measured_impressions"], found["viewable_impressions"]
    return {**found, "viewability_rate": ratio(viewable, measured, 4)}
