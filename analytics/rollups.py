"""Rollup tables: hourly aggregates of beacon.events, filled by materialized views.

Exactness (docs/reports.md "Rollups"): a materialized view sees every inserted block,
also one that beacon.events later deduplicates (an event replayed with a new insert token
lands twice in the table, where FINAL hides it, and twice in a view's sums). So a rollup row
is one of two kinds, told apart by its `live` and `settled` flags:

- live rows, written by the views: the event count is a uniqExact state of event_id, so a
  replayed event is counted once whatever the blocks it came in;
- settled rows, written by analytics/rollup_settle.py for closed days: the count is a plain
  sum recomputed from `events FINAL`. Sets of event ids cost O(events) to merge (1.8 s over
  10M events on the CI machine), sums cost nothing: settling keeps the ids only for the
  last day or two.

Unique people and visitors are uniqExact states of string keys, which ClickHouse keeps as
128-bit SipHash values, never as the ids themselves; they merge over any range. Orders and
the click map are keyed by order and click, so a replayed row changes nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from analytics.schema import DATABASE, EVENTS


def person(table: str = "") -> str:
    """A person, as the campaign report counts them (analytics/campaign_report.py): a
    message's recipient, else a visitor, else the event itself. `table`: "e." in a join."""
    t = table
    return (
        f"if({t}recipient != '', concat({t}message, char(0), {t}recipient), "
        f"if({t}visitor_id != 0, concat(char(1), toString({t}visitor_id)), "
        f"concat(char(2), toString({t}event_id))))"
    )


PERSON = person()
VISITOR = "toString(visitor_id)"  # as a string: the uniqExact state keeps its hash only
# The order a conversion pixel belongs to; its pixels are ranked so that the first one,
# preferring one that carries a click id, decides (analytics/campaign_report.py).
ORDER_KEY = "sipHash128(if(order_id != '', order_id, toString(event_id)))"
RANK = "(click_id = '', received_at, event_id)"
RANK_TYPE = "Tuple(UInt8, DateTime64(3, 'UTC'), UUID)"
SCROLL_BUCKET = (
    "if(event_type = 'engagement', least(intDiv(toUInt8OrZero(props['scroll_pct']), 25) * 25, "
    "100), 0)"
)
UNIQ = "AggregateFunction(uniqExact, String)"

LIVE_COLUMNS = (
    ("events_settled", "SimpleAggregateFunction(sum, UInt64)"),
    ("events_live", "AggregateFunction(uniqExact, UUID)"),
    ("live", "SimpleAggregateFunction(max, UInt8)"),
    ("settled", "SimpleAggregateFunction(max, UInt8)"),
)
LIVE_STATES = (
    "toUInt64(0) AS events_settled, uniqExactState(event_id) AS events_live, "
    "toUInt8(1) AS live, toUInt8(0) AS settled"
)
SETTLED_STATES = (
    "count() AS events_settled, uniqExactStateIf(event_id, 0) AS events_live, "
    "toUInt8(0) AS live, toUInt8(1) AS settled"
)
# What a report reads as the number of events of a group of rollup rows.
EVENTS_MERGED = "(sum(events_settled) + uniqExactMerge(events_live))"


@dataclass(frozen=True)
class Rollup:
    """One rollup table: its grouping columns and aggregate states, and the events it reads."""

    name: str
    where: str  # which events feed it
    dims: tuple[tuple[str, str, str], ...]  # (column, type, expression over beacon.events)
    states: tuple[tuple[str, str, str], ...]  # (column, type, aggregate state expression)
    counted: bool = True  # has an event count (live/settled columns): settle it
    grain: str = "hour"  # the period of a row: hour or day
    order_by: tuple[str, ...] = ()  # sort key first columns; the other dims follow
    # The sort key before a dimension was added (with_dim): ClickHouse keeps a table's
    # primary key when ALTER extends its sort key, and a partition moves only between
    # tables with equal keys (analytics/rollup_settle.py).
    primary_key: str = ""

    @property
    def table(self) -> str:
        return f"{DATABASE}.{self.name}"

    @property
    def view(self) -> str:
        return f"{DATABASE}.{self.name}_mv"

    def columns(self) -> list[tuple[str, str]]:
        out = [("period", "DateTime('UTC')")] + [(c, t) for c, t, _ in self.dims]
        if self.counted:
            out += list(LIVE_COLUMNS)
        return out + [(c, t) for c, t, _ in self.states]

    @property
    def sort_key(self) -> str:
        """Every grouping column is in the sort key: AggregatingMergeTree merges rows with
        equal keys, and would keep any one value of a column left out."""
        keys = list(self.order_by) + [c for c, _, _ in self.dims if c not in self.order_by]
        return ", ".join(keys if "period" in keys else [*keys, "period"])

    def create_table(self, table: str | None = None, engine: str = "AggregatingMergeTree") -> str:
        cols = ",\n    ".join(f"{c} {t}" for c, t in self.columns())
        primary = f"\nPRIMARY KEY ({self.primary_key})" if self.primary_key else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {table or self.table}\n(\n    {cols}\n)\n"
            f"ENGINE = {engine}\nPARTITION BY toDate(period){primary}\n"
            f"ORDER BY ({self.sort_key})"
        )

    @property
    def period(self) -> str:
        """The period of an event's row, from received_at."""
        return f"toStartOf{self.grain.title()}(received_at)"

    def select(
        self, settled: bool = False, final: bool = False, source: str = EVENTS, where: str = ""
    ) -> str:
        """Rollup rows from events: live (what the view inserts) or settled (counted from
        FINAL, which settled sums need: only FINAL counts a replayed event once)."""
        dims = [f"{expr} AS {col}" for col, _, expr in self.dims]
        states = [f"{expr} AS {col}" for col, _, expr in self.states]
        if self.counted:
            states.insert(0, SETTLED_STATES if settled else LIVE_STATES)
        group = ", ".join(["period", *(c for c, _, _ in self.dims)])
        final_sql = " FINAL" if settled or final else ""
        condition = f"({self.where}) AND ({where})" if where else self.where
        return (
            f"SELECT {self.period} AS period, {', '.join(dims + states)}\n"
            f"FROM {source}{final_sql}\nWHERE {condition}\nGROUP BY {group}"
        )

    def create_view(self, source: str = EVENTS, view: str | None = None) -> str:
        return (
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view or self.view} TO {self.table}\n"
            f"AS {self.select(source=source)}"
        )

    def with_dim(self, name: str, kind: str) -> Rollup:
        """This rollup grouped by one more column of beacon.events, last in its sort key."""
        primary = self.primary_key or self.sort_key
        return replace(self, dims=(*self.dims, dim(name, kind)), primary_key=primary)

    def add_dim_statements(self, name: str) -> list[str]:
        """What turns the table and view of this rollup without `name` into this one: the
        column, added last to the sort key, and the view's new query. Safe to rerun (the key
        then stays as it is), and nothing stored is rewritten: earlier rows read ''."""
        at = [c for c, _, _ in self.dims].index(name)
        kind, after = self.dims[at][1], self.dims[at - 1][0]  # in the order of columns()
        return [
            f"ALTER TABLE {self.table}\nADD COLUMN IF NOT EXISTS {name} {kind} AFTER {after},\n"
            f"MODIFY ORDER BY ({self.sort_key})",
            f"ALTER TABLE {self.view}\nMODIFY QUERY {self.select()}",
        ]


def dim(name: str, kind: str = "LowCardinality(String)", expr: str | None = None) -> tuple:
    return (name, kind, expr or name)


EVENTS_HOURLY_V5 = Rollup(
    name="rollup_events_hourly",
    where="1",
    dims=(
        dim("site"),
        dim("campaign"),
        dim("ad"),
        dim("event_type"),
        dim("verified", "UInt8"),
        dim("machine_open", "UInt8"),
        dim("is_bot", "UInt8"),
        dim("proxied", "UInt8", "mail_proxy != ''"),
    ),
    states=(
        # Funnel events only: on page views a person is the visitor, counted just below.
        ("people", UNIQ, f"uniqExactStateIf({PERSON}, event_type IN ('send', 'open', 'click'))"),
        ("recipients", UNIQ, "uniqExactStateIf(recipient, recipient != '')"),
        ("visitors", UNIQ, f"uniqExactStateIf({VISITOR}, visitor_id != 0)"),
    ),
    order_by=("site", "campaign", "ad", "period", "event_type"),
)
# Pages and referrers by day: by hour, a page's row would hold little more than its events.
# Reports read partial days at the ends of a range from raw events.
PAGES_DAILY = Rollup(
    name="rollup_pages_daily",
    where="event_type IN ('pageview', 'engagement')",
    dims=(
        dim("site"),
        dim("url_host"),
        dim("url_path", "String"),
        dim("event_type"),
        dim("scroll_pct", "UInt8", SCROLL_BUCKET),
    ),
    states=(("visitors", UNIQ, f"uniqExactStateIf({VISITOR}, visitor_id != 0)"),),
    order_by=("site", "period", "url_host", "url_path", "event_type", "scroll_pct"),
    grain="day",
)
REFERRERS_DAILY = Rollup(
    name="rollup_referrers_daily",
    where="event_type = 'pageview'",
    dims=(dim("site"), dim("referrer_host", "String", "domain(referrer)")),
    states=(("visitors", UNIQ, f"uniqExactStateIf({VISITOR}, visitor_id != 0)"),),
    order_by=("site", "period", "referrer_host"),
    grain="day",
)


def ranked(column: str, kind: str) -> tuple[str, str, str]:
    """The value of `column` on an order's first pixel."""
    state = f"AggregateFunction(argMin, {kind}, {RANK_TYPE})"
    return (f"first_{column}", state, f"argMinState({column}, {RANK})")


ORDERS = Rollup(
    name="rollup_orders",
    where="event_type = 'conversion'",
    dims=(dim("site"), dim("verified", "UInt8"), dim("order_key", "FixedString(16)", ORDER_KEY)),
    states=(
        ("rank", f"AggregateFunction(min, {RANK_TYPE})", f"minState({RANK})"),
        ranked("campaign", "LowCardinality(String)"),
        ranked("ad", "LowCardinality(String)"),
        ranked("click_id", "String"),
        ranked("value", "Decimal(18, 4)"),
        ranked("currency", "LowCardinality(String)"),
        (
            "first_hour",
            f"AggregateFunction(argMin, DateTime('UTC'), {RANK_TYPE})",
            f"argMinState(toStartOfHour(received_at), {RANK})",
        ),
    ),
    counted=False,
    order_by=("site", "order_key", "period", "verified"),
)
# Click id -> campaign and ad, for last-click attribution of conversions.
CLICKS = Rollup(
    name="rollup_clicks",
    where="event_type = 'click' AND click_id != ''",
    dims=(dim("click_id", "String"),),
    states=(
        ("click_campaign", "SimpleAggregateFunction(any, LowCardinality(String))", "any(campaign)"),
        ("click_ad", "SimpleAggregateFunction(any, LowCardinality(String))", "any(ad)"),
    ),
    counted=False,
    order_by=("click_id", "period"),
)

# Ad viewability (docs/tracking.md "Ad viewability"): the /a.js tag's impressions, each with
# its own `imp` id (`measured`: the browser could observe the slot), and its viewable events,
# one per impression at most. Ad-server pixels carry no `imp` and stay out.
VIEWABILITY_HOURLY_V8 = Rollup(
    name="rollup_viewability_hourly",
    where="event_type IN ('impression', 'viewable') AND props['imp'] != ''",
    dims=(
        dim("site"),
        dim("campaign"),
        dim("ad"),
        dim("event_type"),
        dim("verified", "UInt8"),
        dim("kind", "LowCardinality(String)", "props['kind']"),
        dim("measured", "UInt8", "props['measured'] = '1'"),
    ),
    states=(),
    order_by=("site", "campaign", "ad", "period", "event_type"),
)

# Invalid traffic (analytics/ivt.py): the consumer's reason, '' for valid traffic, a
# dimension of the rollups whose reports leave it out (schema migration 9).
IVT_DIM = ("ivt", "LowCardinality(String)")
EVENTS_HOURLY = EVENTS_HOURLY_V5.with_dim(*IVT_DIM)
VIEWABILITY_HOURLY = VIEWABILITY_HOURLY_V8.with_dim(*IVT_DIM)

# Schema migration 5 made the first five; 8 the viewability rollup; 9 added `ivt` to two.
# The shapes of 5 and 8 stay as they were: a store migrates through them in order.
ROLLUPS_V5 = (EVENTS_HOURLY_V5, PAGES_DAILY, REFERRERS_DAILY, ORDERS, CLICKS)
ROLLUPS = (EVENTS_HOURLY, PAGES_DAILY, REFERRERS_DAILY, ORDERS, CLICKS, VIEWABILITY_HOURLY)
IVT_ROLLUPS = (EVENTS_HOURLY, VIEWABILITY_HOURLY)
# The rollups whose live rows hold sets (uniqExact states), which grow with a day's traffic.
SET_ROLLUPS = tuple(r for r in ROLLUPS if any("uniqExact" in t for _, t in r.columns()))

# Days being settled (analytics/rollup_settle.py): reports read them from raw events until
# `done`; a settle cut short leaves done = 0, and the next pass finishes it.
SETTLING = f"{DATABASE}.rollup_settling"
SETTLING_DDL = f"""CREATE TABLE IF NOT EXISTS {SETTLING}
(day Date, done UInt8, at DateTime64(6, 'UTC') DEFAULT now64(6))
ENGINE = ReplacingMergeTree(at)
ORDER BY day"""


def migration_statements(rollups: tuple[Rollup, ...] = ROLLUPS_V5) -> list[str]:
    """Schema migration 5 (and 8): the tables, then the views. The backfill of the events
    already stored is analytics/rollup_settle.py's (settle every day), run by migration 5."""
    out = [SETTLING_DDL]
    out += [r.create_table() for r in rollups]
    out += [r.create_view() for r in rollups]
    return out


# -- a cluster (deploy/clickhouse/cluster.sql, analytics/cluster_ddl.py) -------------------

# Each rollup is <name>_local on every shard, filled by a view on that shard's events_local
# (each insert's slice for a shard lands there, and so do its rollup rows), behind a
# Distributed <name> that reports read; uniqExact states merge across shards. Nothing inserts
# into the Distributed tables, so any sharding key does.
CLUSTER_SHARDING_KEYS = {r.name: "rand()" for r in ROLLUPS} | {SETTLING.split(".")[1]: "rand()"}
VIEWS = frozenset(r.view.split(".")[1] for r in ROLLUPS)
