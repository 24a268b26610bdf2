"""Settling: a day of every rollup recomputed from `events FINAL`, swapped in at once.

Why (analytics/rollups.py): live rows count events with sets of event ids, which stay exact
when an event arrives twice but cost O(events) to read. A day that has ended is settled: its
rows are recomputed from `events FINAL` as plain sums and replace the day's partition. The
same recomputation serves erasure (a deleted person leaves no count and no hash behind) and
the backfill of events stored before the rollups existed.

Inserts go on while a day is settled. Rows are split by `inserted_at` at a cut taken before
the recomputation: older rows go into the settled sums, newer ones (and those inserted
while the partition was swapped) are added back as live rows, whose event ids merge with
whatever a view wrote for them. While a day is being settled, and whenever a settled day
also holds live rows (an event that came late), reports read that day from raw events
(analytics/rollup_query.py), and a report that a run began under is read again
(analytics/funnel.py steady), so no report ever sees a half-settled day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

from analytics import visits
from analytics.cluster import on_each_shard
from analytics.report_window import sql_string
from analytics.rollups import EVENTS_HOURLY, ROLLUPS, SETTLING, Rollup
from analytics.schema import DATABASE, EVENTS
from analytics.store import VALUES_SETTINGS, StoreError, Writer, cluster_of, whole_days
from analytics.store.http import INSERT_QUERY_ID_PREFIX, processes

log = logging.getLogger("beacon.rollups")

# A day is settled this long after it ends: the retries and replays of its last events are
# in by then (a late one only sends that day to raw events until the next pass).
SETTLE_AFTER_S = 3600
# An insert that began this long before the cut may commit after it: its rows count as new
# (and one seen running then moves the cut before its start).
INSERT_MARGIN_S = 60
PASS_INTERVAL_S = 60.0
# A staging table (a swap's, a day's visits') this old is left over: its settle was killed,
# or its DROP failed (on a server, a session still busy with an insert its client gave up
# on). It holds a day's rows, ids and visitors, that neither erasure nor retention reaches:
# each pass drops such tables. One dropped while still in use fails its settle, which the
# next pass runs again.
STAGE_LEFT_AFTER_S = 3600
STAGE_NAME_RE = "_stage_[0-9]+_[0-9a-f]{12}$"  # stage_name's


def stage_name(table: str) -> str:
    """A settle's own staging table for `table`: two consumers settling the same day never
    share one (in containers every consumer may be pid 1: a random part keeps them apart)."""
    return f"{table}_stage_{os.getpid()}_{uuid.uuid4().hex[:12]}"


def day_literal(day: dt.date) -> str:
    return f"toDate('{day.isoformat()}')"


class Settler:
    """Settles and rebuilds days of the rollups through one writer; one pass at a time."""

    def __init__(
        self,
        writer: Writer,
        clock: Callable[[], float] = time.time,
        insert_margin_s: int = INSERT_MARGIN_S,
        suffix: str = "",
        visit_gap_s: int = visits.DEFAULT_VISIT_GAP_S,
        with_visits: bool = True,
        rollups: tuple[Rollup, ...] = ROLLUPS,
        keep_gap: bool = False,
    ) -> None:
        """`suffix`: "_local" on a shard of a cluster, where the tables the views fill are
        `<name>_local` (deploy/clickhouse/cluster.sql); no shard holds whole visits, so
        visits are settled on a single server only (analytics/visits.py). `with_visits`:
        False before the schema has them, as `rollups` names those it has (the backfill of
        migration 5). `keep_gap`: a settled day's visits are cut again with the gap it was
        settled with, not `visit_gap_s` (an erasure's rebuild)."""
        self.writer = writer
        self.rollups = rollups
        self.visit_gap_s = visit_gap_s
        self.keep_gap = keep_gap
        self.with_visits = with_visits and not suffix
        self.suffix = suffix
        self.events = EVENTS + suffix
        self.settling = SETTLING + suffix
        self.clock = clock
        self.insert_margin_s = insert_margin_s
        self.lock = asyncio.Lock()
        self._last_mark_us = 0

    async def _rows(self, sql: str) -> list[str]:
        return (await self.writer.query(sql, "TSV")).split()

    def closed(self, day: dt.date) -> bool:
        """Whether `day` ended SETTLE_AFTER_S ago (then its rows are settled, else live)."""
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
        return self.clock() >= end + SETTLE_AFTER_S

    async def due_days(self) -> list[dt.date]:
        """Ended days with live rows, days whose settling did not finish, and days not
        ended whose rebuild did not (an erasure stopped between its DELETE and its rebuild:
        their rollups would hold the person until the day ended)."""
        live = " UNION DISTINCT ".join(
            f"SELECT DISTINCT toDate(period) AS day FROM {r.table}{self.suffix} WHERE live = 1"
            for r in self.rollups
            if r.counted
        )
        marked = f"SELECT day FROM {self.settling} FINAL WHERE done = 0"
        unsettled = marked
        if self.with_visits:  # settled days without their visits at this gap (a new gap too)
            unsettled += (
                f" UNION DISTINCT SELECT DISTINCT toDate(period) AS day FROM "
                f"{EVENTS_HOURLY.table} WHERE settled = 1 AND toDate(period) NOT IN (SELECT day "
                f"FROM {visits.VISITS_SETTLED} FINAL WHERE visit_gap_s = {int(self.visit_gap_s)})"
            )
        rows = await self._rows(
            f"SELECT day, day IN ({marked}) FROM ({live} UNION DISTINCT {unsettled}) ORDER BY day"
        )
        days = zip(map(dt.date.fromisoformat, rows[::2]), rows[1::2], strict=True)
        return [day for day, due in days if self.closed(day) or due == "1"]

    async def settle_due(self) -> list[dt.date]:
        """One pass: settle every due day; returns them."""
        await drop_left_stages(self.writer, STAGE_LEFT_AFTER_S)
        days = await self.due_days()
        await self.rebuild(days)
        return days

    async def rebuild(self, days: Iterable[dt.date]) -> None:
        """Recompute every rollup for `days` from the events stored now."""
        async with self.lock:
            for day in days:
                started = time.perf_counter()
                await self._rebuild_day(day)
                log.info(
                    "rollups of %s %s in %.1fs",
                    day,
                    "settled" if self.closed(day) else "rebuilt",
                    time.perf_counter() - started,
                )

    async def backfill(self) -> list[dt.date]:
        """Rollups for every day already in beacon.events (schema migration 5)."""
        with whole_days():
            text = await self._rows(
                f"SELECT DISTINCT toDate(received_at) AS day FROM {self.events} ORDER BY day"
            )
        days = [dt.date.fromisoformat(d) for d in text]
        await self.rebuild(days)
        return days

    async def _mark(self, day: dt.date, done: int, at_us: int | None = None) -> int:
        """Mark `day` (not) done as of `at_us` (default now); returns the mark's version."""
        if at_us is None:
            # The version column orders the marks of this process even within one millisecond.
            at_us = max(int(self.clock() * 1e6), self._last_mark_us + 1)
        self._last_mark_us = max(self._last_mark_us, at_us)
        await self.writer.execute(
            f"INSERT INTO {self.settling} (day, done, at) {VALUES_SETTINGS} VALUES "
            f"({day_literal(day)}, {done}, fromUnixTimestamp64Micro({at_us}, 'UTC'))"
        )
        return at_us

    async def _rebuild_day(self, day: dt.date) -> None:
        # From here on, reports read this day from raw events. The run's "done" is versioned
        # just after its own start, not at its end: another rebuild of the day that began in
        # the meantime (another consumer, an erasure) keeps the day not done until it ends
        # itself, so a run cut short between its swap and its live rows leaves the day due;
        # one cut short after a later one ended marks it due again.
        started_us = await self.mark_due(day)
        try:
            await self._recompute(day, started_us)
        except BaseException:
            # Cut short (a store error, a stop) after a run of the day that began later and
            # ended first (an erasure's rebuild) marked it done over this run's start: a swap
            # of this one, read before that erasure's DELETE, may have landed after it.
            await asyncio.shield(self._due_again(day))
            raise

    async def _due_again(self, day: dt.date) -> None:
        try:
            await self.mark_due(day)
        except Exception as exc:  # best effort: what cut the run short goes on, not this
            # (the store failed the run too, or is closing: a pass may find the day done)
            log.warning("rollups of %s: a run cut short could not mark the day due: %s",
                        day, exc)  # fmt: skip

    async def _recompute(self, day: dt.date, started_us: int) -> None:
        # The DELETEs done before this run reads anything: what they deleted is gone from all
        # it reads. One not among them at the end (made meanwhile, or running) may not be.
        done_before = await self._rows(f"SELECT mutation_id {self._deletes} AND is_done")
        [cut] = await self._rows(self._cut_sql())
        cut = f"toDateTime({int(cut)}, 'UTC')"
        settled = self.closed(day)
        in_day = f"toDate(received_at) = {day_literal(day)}"
        for rollup in self.rollups:
            await self._swap(rollup, day, f"{in_day} AND inserted_at < {cut}", settled)
            # Rows inserted after the cut, or while the partition was swapped: live again.
            live = rollup.select(source=self.events, where=f"{in_day} AND inserted_at >= {cut}")
            await self._day_statement(f"INSERT INTO {rollup.table}{self.suffix} {live}")
        if self.with_visits:
            await self._visits(day, settled)
        if await self._rows(f"SELECT mutation_id {self._deletes} {_not_in(done_before)}"):
            # An erasure's DELETE ran while this run read the day: its swaps may hold the
            # person, landed over the erasure's own rebuild, or before a DELETE that outlived
            # its client (a server goes on after the writer gave up) and whose erasure, failed,
            # will not rebuild. The day stays due, read from raw events until a pass that no
            # DELETE overlaps settles it. Runs that only overlap each other land the same rows,
            # so consumers that settle in step still mark the day done.
            log.info("rollups of %s left due: a DELETE of the events ran meanwhile", day)
            await self.mark_due(day)
            return
        await self._mark(day, 1, started_us + 1)

    async def mark_due(self, day: dt.date) -> int:
        """Mark `day` not done over every mark it has, whatever the clocks that wrote them;
        returns the mark's version."""
        # + 2: a run's done is its start + 1, and at a tie the later insert would win.
        at_us = max(int(self.clock() * 1e6), self._last_mark_us + 1, await self._newest(day) + 2)
        return await self._mark(day, 0, at_us)

    async def _newest(self, day: dt.date) -> int:
        """The version (µs) of the day's newest mark; the table keeps the newest."""
        [newest] = await self._rows(
            f"SELECT toUnixTimestamp64Micro(max(at)) FROM {self.settling} "
            f"WHERE day = {day_literal(day)}"
        )
        return int(newest)

    def _cut_sql(self) -> str:
        """The run's cut (s since the epoch): the insert margin before now, or earlier, before
        the oldest of Beacon's inserts running now. A server goes on with an insert whose
        client gave up, and its rows are timed by its start: one that began before the cut
        and lands during a swap (after its staging read, its views' rows before the REPLACE)
        would be in neither the settled sums nor the live rows."""
        margin = int(self.insert_margin_s)
        # On a cluster, or replicas behind one address, an insert runs where it was taken and
        # on each shard: every server's (analytics/store/http.py).
        cluster = getattr(self.writer, "processes_cluster", "")
        settings = " SETTINGS skip_unavailable_shards = 1" if cluster else ""
        return (
            f"SELECT toUnixTimestamp(now()) - if(count() = 0, {margin}, "
            f"greatest({margin}, toInt64(ceil(max(elapsed))) + 1)) FROM {processes(cluster)} "
            f"WHERE query_kind = 'Insert' AND startsWith(initial_query_id, "
            f"'{INSERT_QUERY_ID_PREFIX}'){settings}"
        )

    @property
    def _deletes(self) -> str:
        """FROM ... WHERE for the DELETEs of the events (an erasure's: lightweight, or a
        mutation of each shard's table) that are not failing. Not other mutations (a TTL's
        materialization can run for hours), nor a failing DELETE, which has deleted nothing:
        one that failed for good would keep every day settled meanwhile due, rebuilt at every
        pass. Its erasure failed with it, and is run again."""
        database, table = self.events.split(".")
        return (
            f"FROM system.mutations WHERE database = '{database}' AND table = '{table}' AND "
            "(position(command, 'DELETE WHERE') > 0 OR position(command, '_row_exists = 0') > 0) "
            "AND latest_fail_reason = ''"
        )

    async def _visits(self, day: dt.date, settled: bool) -> None:
        """The day's visits from all its events (a visit needs them all; an event inserted
        after the cut leaves a live rollup row, which sends reports to raw events for the day
        until the next pass), and the gap they were cut with: 0, none, for an open day."""
        stage = stage_name(visits.VISITS)
        partition = f"PARTITION tuple({day_literal(day)})"
        gap_s = self.visit_gap_s if settled else 0
        if settled and self.keep_gap:
            # An erasure's rebuild: the gap the day was settled with, whatever this process's
            # (the default, in `beacon erase`): another would leave the day due, read raw.
            [kept] = await self._rows(
                f"SELECT max(visit_gap_s) FROM {visits.VISITS_SETTLED} FINAL "
                f"WHERE day = {day_literal(day)}"
            )
            gap_s = int(kept) or gap_s
        if not settled:
            await self.writer.execute(f"ALTER TABLE {visits.VISITS} DROP {partition}")
        else:
            await self.writer.execute(f"DROP TABLE IF EXISTS {stage}")
            await self.writer.execute(visits.create_table(stage))
            try:
                where = f"toDate(received_at) = {day_literal(day)}"
                made = visits.select(where, gap_s, self.events)
                await self._day_statement(f"INSERT INTO {stage} {made}")
                [rows] = await self._rows(f"SELECT count() FROM {stage}")
                verb = f"REPLACE {partition} FROM {stage}" if int(rows) else f"DROP {partition}"
                await self.writer.execute(f"ALTER TABLE {visits.VISITS} {verb}")
            finally:
                await _drop_table(self.writer, stage)
        await self.writer.execute(
            f"INSERT INTO {visits.VISITS_SETTLED} (day, visit_gap_s) {VALUES_SETTINGS} "
            f"VALUES ({day_literal(day)}, {gap_s})"
        )

    async def _day_statement(self, sql: str) -> None:
        """A statement that reads a whole day of events: held to the store's day timeout
        (analytics.store.whole_days), the run's small ones to a statement's."""
        with whole_days():
            await self.writer.execute(sql)

    async def _swap(self, rollup: Rollup, day: dt.date, where: str, settled: bool) -> None:
        """Replace the day's partition of `rollup` with rows recomputed from `where`."""
        stage = stage_name(f"{DATABASE}.{rollup.name}")
        await self.writer.execute(f"DROP TABLE IF EXISTS {stage}")
        await self.writer.execute(rollup.create_table(stage))
        try:
            recomputed = rollup.select(settled=settled, final=True, source=self.events, where=where)
            await self._day_statement(f"INSERT INTO {stage} {recomputed}")
            partition = f"PARTITION tuple({day_literal(day)})"
            [rows] = await self._rows(f"SELECT count() FROM {stage}")
            if int(rows):
                await self.writer.execute(
                    f"ALTER TABLE {rollup.table}{self.suffix} REPLACE {partition} FROM {stage}"
                )
            else:  # ClickHouse 26 refuses to replace with nothing: dropping says the same
                await self.writer.execute(
                    f"ALTER TABLE {rollup.table}{self.suffix} DROP {partition}"
                )
        finally:
            await _drop_table(self.writer, stage)


async def drop_left_stages(writer: Writer, older_than_s: int) -> None:
    """Drop the staging tables made more than `older_than_s` ago (STAGE_LEFT_AFTER_S)."""
    left = await writer.query(
        f"SELECT name FROM system.tables WHERE database = '{DATABASE}' "
        f"AND match(name, '{STAGE_NAME_RE}') "
        f"AND metadata_modification_time < now() - {int(older_than_s)}",
        "TSV",
    )
    for name in left.split():
        log.warning("dropping %s.%s, a staging table left by a settle", DATABASE, name)
        await _drop_table(writer, f"{DATABASE}.{name}")


async def _drop_table(writer: Writer, table: str) -> None:
    """DROP TABLE, a failure logged and left to the next pass (drop_left_stages): one table
    that will not go must not stop the settling of every day, nor take the place of what
    ended a settle (a cancellation taken for a store error was caught by the settle loop,
    which went on for good)."""
    try:
        await writer.execute(f"DROP TABLE IF EXISTS {table}")
    except StoreError as exc:
        log.warning("cannot drop %s (%s); the next pass tries again", table, str(exc)[:300])


def _not_in(ids: list[str]) -> str:
    """AND mutation_id is none of `ids`."""
    return f"AND mutation_id NOT IN ({', '.join(map(sql_string, ids))})" if ids else ""


async def settle_loop(settler: Settler, stop: asyncio.Event) -> None:
    """Settle due days every PASS_INTERVAL_S until `stop` is set (every consumer runs it;
    two settling one day at once only do the work twice). On a cluster, each shard's."""
    while not stop.is_set():
        try:
            await settle_all(settler)
        except StoreError as exc:  # the store is down or busy: the next pass tries again
            log.warning("settling rollups failed: %s", str(exc)[:300])
        try:
            await asyncio.wait_for(stop.wait(), PASS_INTERVAL_S)
        except TimeoutError:
            pass


async def settle_all(settler: Settler) -> list[dt.date]:
    """One pass of `settler`, or on a cluster (the writer's Cluster) of each shard's
    `<name>_local` tables; the days settled (on any shard)."""

    def on(writer: Writer, suffix: str) -> Settler:  # a shard's: same clock and margin
        return (
            settler
            if not suffix
            else Settler(
                writer, settler.clock, settler.insert_margin_s, suffix, settler.visit_gap_s
            )
        )

    return await on_rollups(settler.writer, Settler.settle_due, on)


async def settles_here(writer: Writer) -> bool:
    """Whether the rollups here are tables (not a cluster's Distributed ones, which only
    cluster mode settles, shard by shard)."""
    engines = await writer.query(
        f"SELECT engine FROM system.tables WHERE database = '{DATABASE}' "
        f"AND name = '{ROLLUPS[0].name}'",
        "TSV",
    )
    return engines.strip().endswith("MergeTree")


async def on_rollups(
    writer: Writer,
    work: Callable[[Settler], Awaitable[Iterable[dt.date] | None]],
    settler: Callable[[Writer, str], Settler] = lambda w, suffix: Settler(w, suffix=suffix),
) -> list[dt.date]:
    """`work` on the rollups where they are kept: this server's tables, or in cluster mode (the
    writer's Cluster) each shard's `<name>_local` tables, on one replica of each; the days it
    returned, from all. A cluster's Distributed rollups outside cluster mode: nothing runs."""
    cluster = cluster_of(writer)
    if cluster is not None:
        done = await on_each_shard(writer, cluster, lambda w: work(settler(w, "_local")))
    elif await settles_here(writer):
        done = [await work(settler(writer, ""))]
    else:
        return []
    return sorted({day for days in done for day in days or ()})


async def due_before_erasure(writer: Writer, days: Iterable[str]) -> None:
    """Mark the days an erasure is about to delete from not done, here or on each shard:
    reports read them from raw events until a rebuild ends, so one that never comes (the
    erasure stopped between its DELETE and its rebuild, which a second try, finding no rows,
    would skip) leaves them due for the next settling pass, not holding the person."""
    dates = [dt.date.fromisoformat(d) for d in days]

    async def mark(settler: Settler) -> None:
        for day in dates:
            await settler.mark_due(day)

    await on_rollups(writer, mark)


async def rebuild_after_erasure(writer: Writer, days: Iterable[str]) -> None:
    """Recompute the rollups of the days an erasure touched (ISO dates): here, or on each
    shard of a cluster (its `<name>_local` tables)."""
    dates = [dt.date.fromisoformat(d) for d in days]
    await on_rollups(
        writer,
        lambda settler: settler.rebuild(dates),
        lambda w, suffix: Settler(w, suffix=suffix, keep_gap=True),
    )
