"""A batch into beacon.events, parsed, checked and enriched by ClickHouse; Python parses each
distinct user agent once.

Parsing JSON in Python costs more than storing the row (~4 us an event with orjson, and as much
again to build columns), so the consumer hands ClickHouse the raw lines and moves bytes:

  1. the lines go as they are into a temporary table (LineAsString: no parse, ~0.2 us a line);
  2. one INSERT ... SELECT parses each line once (JSONExtract into a typed tuple, simdjson) into
     a staging table, with the line's number and its reject reason ('' for a good line);
  3. the distinct (user agent, Apple address) pairs of the good lines come back: Python
     enriches each once (consumers/enrich.py, the rules of analytics/machine_opens.py) and
     sends them as a small table;
  4. one INSERT ... SELECT joins the two into beacon.events under the batch's dedup token,
     with each row's invalid-traffic reason (analytics/ivt.py);
  5. the rejects (line number, reason) come back for the dead-letter topic.

Everything runs in ClickHouse: in chDB on the consumer's own core, or on a server, where the
consumer only moves bytes (analytics/store/http.py keeps the temporary tables in one session).
A replay checks its event ids after the insert and stores what is missing under a fresh token
(see `store`). docs/performance.md "Consumer" has the cost of each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import NamedTuple

import orjson

from analytics import erasure, ivt
from analytics.cluster import check_mode
from analytics.schema import EVENTS
from analytics.store import TOKEN_RE, StoreError, Writer, json_rows
from consumers.enrich import Enricher
from contract.event import RECEIVED_AT_MAX_MS, SCHEMA_VERSION

# The wire fields (docs/tracking.md "Event format") as JSONExtract reads them. It converts what
# it can (a number into a String field as its text, a numeric string into a number, as ClickHouse's
# JSONEachRow does) and reads a missing field as NULL or the default. Nullable marks what is
# checked: a number that does not fit its column (a negative visitor id, a flag of 300) is
# NULL, and the line is refused as bad_field_type rather than stored with a 0.
NUMBERS = ("schema_version", "visitor_id", "dnt", "verified")
WIRE_FIELDS: tuple[tuple[str, str], ...] = (
    ("schema_version", "Nullable(Int64)"),
    ("event_id", "Nullable(String)"),
    ("received_at", "Nullable(Int64)"),  # ms since the epoch
    ("event_type", "String"),
    ("site", "String"),
    ("campaign", "String"),
    ("message", "String"),
    ("recipient", "String"),
    ("ad", "String"),
    ("url_host", "String"),
    ("url_path", "String"),
    ("url_query", "String"),
    ("referrer", "String"),
    ("props", "Map(String, String)"),
    ("user_agent", "String"),
    ("ip", "String"),
    ("country", "String"),
    ("visitor_id", "Nullable(UInt64)"),
    ("dnt", "Nullable(UInt8)"),
    ("consent", "String"),
    ("transport", "String"),
    ("verified", "Nullable(UInt8)"),
    ("click_id", "String"),
    ("order_id", "String"),
    ("value", "Nullable(String)"),
    ("currency", "String"),
    # Not columns: what the invalid-traffic rule reads (analytics/ivt.py, docs/tracking.md).
    ("network", "String"),
    ("purpose", "String"),
)
# A country as the column keeps it (ASCII letters: re2, as Python's [A-Za-z]).
COUNTRY_RE = "^[A-Za-z]{2}$"
# Each column of beacon.events the staging table keeps, and its expression over the parsed
# tuple `w`. The checked fields are read again only on a good line.
STAGED: tuple[tuple[str, str, str], ...] = (
    ("schema_version", "UInt8", "toUInt8(ifNull(w.schema_version, 0))"),
    ("event_id", "UUID", "toUUIDOrZero(ifNull(w.event_id, ''))"),
    ("received_at", "DateTime64(3, 'UTC')", "fromUnixTimestamp64Milli(ifNull(w.received_at, 0))"),
    *(
        (name, "String", f"w.{name}")
        for name in (
            "event_type",
            "site",
            "campaign",
            "message",
            "recipient",
            "ad",
            "url_host",
            "url_path",
            "url_query",
            "referrer",
            "user_agent",
            "ip",
            "consent",
            "transport",
            "click_id",
            "order_id",
            "currency",
        )
    ),
    ("props", "Map(String, String)", "w.props"),
    ("visitor_id", "UInt64", "ifNull(w.visitor_id, 0)"),
    ("dnt", "UInt8", "ifNull(w.dnt, 0)"),
    ("verified", "UInt8", "ifNull(w.verified, 0)"),
    # What collector.event writes into the Decimal(18, 4) column: ASCII digits, <= 4 decimals.
    ("value", "Decimal(18, 4)", "toDecimal64OrZero(ifNull(w.value, ''), 4)"),
    # Two ASCII letters, upper case; anything else is stored as "" (unknown), the line kept:
    # consumers/enrich.py COUNTRY_RE.
    ("country", "String", f"if(match(w.country, '{COUNTRY_RE}'), upper(w.country), '')"),
    # The address an Apple-network rule needs (analytics/machine_opens.py), else '': the key
    # of the enrichment join stays one row per user agent for everyone else.
    ("agent_ip", "String", "if(startsWith(w.ip, '17.'), w.ip, '')"),
    ("network", "String", "w.network"),
    ("purpose", "String", "w.purpose"),
)
# Staged for the join and the ivt rule, not stored.
STAGE_ONLY = frozenset({"agent_ip", "network", "purpose"})
UUID_RE = "^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"
VALUE_RE = "^[0-9]{1,14}([.][0-9]{1,4})?$"
OBJECT_RE = "^[ \\t\\r]*[{]"  # an array would be read into the tuple by position
VERSION_OK = f"ifNull(w.schema_version, 0) BETWEEN 0 AND {SCHEMA_VERSION}"
RECEIVED_OK = f"w.received_at BETWEEN 0 AND {RECEIVED_AT_MAX_MS}"  # NULL: not a number
VALUE_OK = f"(w.value IS NULL OR match(w.value, '{VALUE_RE}'))"
# JSONType reads the line again: only for the rare line where the number came out NULL.
NUMBERS_OK = " AND ".join(f"(w.{f} IS NOT NULL OR JSONType(line, '{f}') = 'Null')" for f in NUMBERS)
GOOD = (
    f"match(line, '{OBJECT_RE}') AND w.event_id IS NOT NULL AND match(w.event_id, '{UUID_RE}')"
    f" AND {RECEIVED_OK} AND {VERSION_OK} AND {VALUE_OK} AND {NUMBERS_OK}"
)
# Why a line is refused, in the order consumers/enrich.decode checks: the first condition that
# holds names it, and a line none names has a number that does not fit its column.
REFUSALS: tuple[tuple[str, str], ...] = (
    ("malformed_json", "NOT isValidJSON(line)"),
    ("not_an_event", f"NOT match(line, '{OBJECT_RE}') OR NOT JSONHas(line, 'event_id')"),
    ("bad_event_id", f"NOT match(ifNull(w.event_id, ''), '{UUID_RE}')"),
    ("unknown_schema_version", f"NOT {VERSION_OK}"),
    ("bad_received_at", f"NOT ifNull({RECEIVED_OK}, 0)"),
    ("bad_value", f"NOT {VALUE_OK}"),
)
OTHER_REFUSAL = "bad_field_type"
# Every reason a line can be refused with: the `reason` label of the consumer's rejected-row and
# dead-letter counters (consumers/metrics.py makes each at 0) and the DLQ header.
REJECT_REASONS: tuple[str, ...] = (*(reason for reason, _ in REFUSALS), OTHER_REFUSAL)
# Evaluated past GOOD only for the lines that are not (short-circuit), so a good line is parsed
# once.
REASON = "multiIf(\n    {}, '',\n{}    '{}')".format(
    GOOD,
    "".join(f"    {condition}, '{reason}',\n" for reason, condition in REFUSALS),
    OTHER_REFUSAL,
)
# What the consumer adds per user agent (consumers/enrich.py Enricher.agent_row), joined on
# (user_agent, agent_ip).
AGENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("user_agent", "String"),
    ("agent_ip", "String"),
    ("browser", "String"),
    ("browser_version", "String"),
    ("os", "String"),
    ("device_type", "String"),
    ("is_bot", "UInt8"),
    ("machine_open", "UInt8"),
    ("machine_reason", "String"),
    ("mail_proxy", "String"),
)
AGENT_INDEX = {name: i for i, (name, _) in enumerate(AGENT_COLUMNS)}
MAIL_PROXY, IS_BOT = AGENT_INDEX["mail_proxy"], AGENT_INDEX["is_bot"]
# Machine-open columns are for opens only (analytics/machine_opens.py); other events read 0/''.
OPEN_ONLY = {"machine_open": "0", "machine_reason": "''", "mail_proxy": "''"}
# The invalid-traffic reason (schema migration 9) over the staged row `s` and its agent `a`:
# the agent's proxy as it is before OPEN_ONLY, since the rule needs it for every event type.
IVT = ivt.classify_sql("a.mail_proxy", "a.is_bot", "s.network", "s.purpose")
# The columns of beacon.events an insert fills, in order; inserted_at keeps its DEFAULT.
EVENT_COLUMNS: tuple[str, ...] = (
    *(c for c, _, _ in STAGED if c not in STAGE_ONLY),
    *(c for c, _ in AGENT_COLUMNS[2:]),
    "ivt",
)


def _columns(pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in pairs)


# (field, erasures, the last one's time in ms) of the erasures recorded since a time.
Erasures = list[tuple[str, int, int]]


class Erase(NamedTuple):
    """Rows of a batch that may be stored of people erased while it was on its way (see
    Stored.erase)."""

    from_ms: int  # the batch's oldest and newest received_at
    to_ms: int
    # The days (ISO dates) of the batch's rows of people erased since its oldest: their
    # rollups are rebuilt even when the erasure's own DELETE took the rows after the views
    # had counted them (it rebuilt only the days it had found the person in before).
    days: tuple[str, ...] = ()


@dataclass
class Stored:
    """What came of a batch: good lines stored, and (line number, reason) of the others."""

    rows: int
    rejects: list[tuple[int, str]]
    refilled: int = 0  # rows of a replay that were missing and went in under a fresh token
    # received_at of the newest good line with an exact time in each segment; 0: none
    newest_by_segment: list[int] = field(default_factory=list)
    invalid: dict[str, int] = field(default_factory=dict)  # good rows by ivt reason but ''
    inserted: int = 0  # rows sent to the insert (a replay's may be taken by its token)
    erased: int = 0  # good rows left out: their person was erased after them (analytics/erasure.py)
    # Rows of this batch may be stored of people erased since its oldest: delete them
    # (Ingest.erase_recorded) before the batch is acknowledged. None: nothing to do.
    erase: Erase | None = None

    @property
    def newest_ms(self) -> int:
        """The newest of the whole batch."""
        return max(self.newest_by_segment, default=0)


def _received_between(first_ms: int, last_ms: int) -> str:
    """A condition on the events' received_at: from `first_ms` to `last_ms` (ms), both in."""
    return (
        f"received_at BETWEEN fromUnixTimestamp64Milli({first_ms}, 'UTC') "
        f"AND fromUnixTimestamp64Milli({last_ms}, 'UTC')"
    )


class Ingest:
    """Stores batches of raw wire lines, one at a time (they share the temporary tables)."""

    def __init__(self, writer: Writer, enricher: Enricher | None = None) -> None:
        self.writer = writer
        self.enricher = enricher or Enricher()
        suffix = uuid.uuid4().hex[:12]  # several consumers may share a server (and a session)
        self.lines = f"beacon_lines_{suffix}"
        self.stage = f"beacon_stage_{suffix}"
        self.agents = f"beacon_agents_{suffix}"
        self._lock = asyncio.Lock()
        # The temporary tables may hold rows of an earlier batch: its clear failed (a server
        # session keeps them, and a retry would stage its lines on top of them).
        self._dirty = False
        # This batch's condition for rows to leave out (people erased after them), or "",
        # and the erasures it read for it (analytics/erasure.recent_sql).
        self._erased = ""
        self._seen: Erasures = []

    async def store(
        self,
        body: Sequence[bytes],
        token: str,
        replay: bool = False,
        partial: bool = False,
        segments: Sequence[int] = (),
        again: bool = False,
        waited: bool = False,
    ) -> Stored:
        """Store the lines of `body` (the pieces of lines joined by newlines: join_lines) under
        `token`. A replay then checks its event ids: an embedded store killed mid-insert can
        keep a token and lose its rows, so what the table lacks goes in under a fresh token. A
        `partial` replay (not the batch its token named) stores only what the table lacks.
        `segments`: lines of each source of the body, for `Stored.newest_by_segment`. `again`:
        an earlier attempt at this batch may have stored it (its insert failed or timed out).
        `waited`: the caller waited for such an attempt's insert still running (await_earlier,
        outside the lock a Kafka revocation waits for); none can start since (the batch is
        this member's, one attempt at a time). Raises StoreError."""
        if not TOKEN_RE.match(token):
            raise ValueError(f"bad dedup token {token!r}")
        async with self._lock:
            # On a server, a session of the batch's own: none of an earlier batch's rows can
            # be in its temporary tables, on whichever server it runs.
            self.writer.new_session(token)
            try:
                if (replay or again) and not waited:
                    # An earlier attempt's insert may still run on a server whose client gave
                    # up on it: what it lands after this attempt's erasure check would stay.
                    await self.await_earlier(token, partial)
                if self._dirty:
                    await self._empty()  # raises: the batch fails, and is retried
                await self._stage(body)
                good, rejects, newest, (oldest, last) = await self._count(segments)
                invalid: dict[str, int] = {}
                inserted = refilled = erased = 0
                if good:
                    erased = await self._leave_out_erased(oldest)
                    invalid = await self._load_agents()
                    if not partial:
                        await self._insert(token, "")
                        inserted = good - erased
                # A replay, and a retry: an insert cut short (a server killed, its machine
                # down) can keep its token and lose its rows, and the token would then drop
                # this attempt's as a repeat.
                if (replay or partial or again) and good:
                    refilled, left_out = await self._refill(token, oldest, last)
                    inserted += refilled
                    erased += left_out
                erase = None
                now = await self._erased_meanwhile(oldest, replay or again) if good else None
                if now is not None:
                    erase = Erase(oldest, last, await self._erased_days(now, oldest))
                return Stored(good, rejects, refilled, newest, invalid, inserted, erased, erase)
            finally:
                self._erased = ""
                self._seen = []
                await self._clear()

    async def await_earlier(self, token: str, partial: bool) -> None:
        """Wait for an earlier attempt's insert of this batch still running on the server, up
        to the writer's bound (StoreError past it). A partial replay's may have been another
        batch's: every batch's counts."""
        await self.writer.await_earlier_inserts(None if partial else token)

    async def _tables(self) -> None:
        staged = [("n", "UInt32"), ("reason", "LowCardinality(String)")]
        staged += [(c, t) for c, t, _ in STAGED]
        for table, columns in (
            (self.lines, "line String"),
            (self.stage, _columns(staged)),
            (self.agents, _columns(AGENT_COLUMNS)),
        ):
            await self.writer.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {table} ({columns}) ENGINE = Memory"
            )

    async def _stage(self, body: Sequence[bytes]) -> None:
        w = self.writer
        parsed = f"Tuple({_columns(WIRE_FIELDS)})"
        await self._tables()
        await w.load(self.lines, body, "LineAsString")
        exprs = ", ".join(f"{expr} AS {name}" for name, _, expr in STAGED)
        # One thread: rows come back in the order they were loaded, so n is the line number.
        await w.execute(
            f"INSERT INTO {self.stage} SELECT n, reason, {exprs} FROM ("
            f"SELECT rowNumberInAllBlocks() AS n, line, "
            f"JSONExtract(line, '{parsed.replace(chr(39), chr(39) * 2)}') AS w, {REASON} AS reason"
            f" FROM {self.lines}) SETTINGS max_threads = 1, "
            "short_circuit_function_evaluation = 'force_enable'"
        )
        # Parsed: the lines go before the insert, which holds the staged rows and its own work,
        # so the two copies of a batch are not held with it (~a batch's bytes off the peak).
        await w.execute(f"TRUNCATE TABLE {self.lines}")

    async def _count(
        self, segments: Sequence[int]
    ) -> tuple[int, list[tuple[int, str]], list[int], tuple[int, int]]:
        """Good lines, the (line number, reason) of the others, the received_at (ms) of the
        newest good line of each segment (one when none are given), and of the oldest and the
        newest good line, in the one scan: the consumer's lag in seconds is measured from the
        newest of each segment. Rows kept without consent have their time cut to the hour
        (collector/consent.py): they say nothing of how fresh the data is, so they are left
        out of it."""
        ends = list(accumulate(segments[:-1]))  # the first line number past each segment
        segment = f"arrayFirstIndex(e -> n < e, {ends}::Array(UInt32))" if ends else "0"
        sql = (
            f"SELECT n, reason, toInt64(0), 0, toInt64(0), toInt64(0) FROM {self.stage} "
            "WHERE reason != '' "
            f"ORDER BY n UNION ALL SELECT toUInt32(count()), 'good', "
            f"toInt64(maxIf(toUnixTimestamp64Milli(received_at), consent != 'missing')), "
            f"toUInt32({segment}) AS segment, toInt64(min(toUnixTimestamp64Milli(received_at))), "
            "toInt64(max(toUnixTimestamp64Milli(received_at))) "
            f"FROM {self.stage} WHERE reason = '' GROUP BY segment"
        )
        rows = json_rows(await self.writer.query(sql, "JSONCompactEachRow"))
        # arrayFirstIndex: 1 for the first segment, 0 past the last end (the last segment).
        newest = [0] * max(1, len(segments))
        good = 0
        oldest: list[int] = []
        last: list[int] = []
        for n, reason, ms, at, first_ms, last_ms in rows:
            if reason == "good":
                good += n
                newest[(at or len(newest)) - 1] = int(ms)
                oldest.append(int(first_ms))
                last.append(int(last_ms))
        rejects = [(n, reason) for n, reason, *_ in rows if reason != "good"]
        return good, rejects, newest, (min(oldest, default=0), max(last, default=0))

    async def _leave_out_erased(self, oldest_ms: int) -> int:
        """Leave out of this batch's inserts the rows of people erased after them; how many.
        Only erasures since the batch's oldest event can apply: almost always none, and then
        this costs one small read."""
        self._seen = await self._recent_erasures(oldest_ms)
        match = self._erased_match(self._seen, oldest_ms)
        if not match:
            return 0
        self._erased = f" AND NOT ({match})"
        count = await self.writer.query(
            f"SELECT count() FROM {self.stage} AS s WHERE s.reason = '' AND ({match})", "TSV"
        )
        return int(count.strip() or 0)

    async def _erased_meanwhile(self, oldest_ms: int, again: bool) -> Erasures | None:
        """The erasures since the batch's oldest event when they may have rows of it stored,
        else None: one recorded after the batch read them, whose DELETE ran before the insert
        landed, left them (one recorded after this read deletes them itself); and when an
        earlier attempt may have landed (a replay, a retry), any the batch's time span reads.
        One more small read a batch; the DELETE only when an erasure came between. Every
        erasure since the oldest event is then applied, not only those after the last one
        read: an erasure's time is its server's clock as it began, so one recorded after the
        read may be stamped before an erasure the read saw (two at once on a server)."""
        now = await self._recent_erasures(oldest_ms)
        return now if now != self._seen or (again and now) else None

    @staticmethod
    def _erased_match(erasures: Erasures, oldest_ms: int, missing: bool = False) -> str:
        """The condition on a staged row (`s`) of a person erased after it, by `erasures`;
        `missing`: on one a replay finds missing (erasure.erased_rows)."""
        fields = [field for field, _, _ in erasures]
        return erasure.erased_rows(fields, "s", oldest_ms, missing)

    async def _erased_days(self, erasures: Erasures, oldest_ms: int) -> tuple[str, ...]:
        """The days of the staged good rows of people `erasures` erased after them
        (Erase.days)."""
        match = self._erased_match(erasures, oldest_ms)
        if not match:
            return ()
        days = await self.writer.query(
            f"SELECT DISTINCT toString(toDate(s.received_at)) FROM {self.stage} AS s "
            f"WHERE s.reason = '' AND ({match})",
            "TSV",
        )
        return tuple(sorted(days.split()))

    async def erase_recorded(self, erase: Erase) -> int:
        """Stored.erase: delete the events received in its time span of every id erased at
        or after its start and before them, and rebuild the rollups of their days; how many
        rows. Outside the insert, so that a rebalance does not wait for it. Raises
        StoreError."""
        from_ms, to_ms, days = erase
        async with self._lock:
            # A session of its own: the batch's may have ended with a failed try of this.
            self.writer.new_session()
            erased: dict[str, dict[int, int]] = {}
            recorded = await self.writer.query(erasure.recorded_sql(from_ms), "TSV")
            for line in recorded.splitlines():
                field, value_hash, at_ms = line.split("\t")
                erased.setdefault(field, {})[int(value_hash)] = int(at_ms)
            listed = erasure.listed_rows(erased)
            if not listed:
                return 0
            # The batch's span (its rows are stored with the staged times it was read from):
            # partitions and the sort key's time prune what the count and the DELETE read.
            wheres = [f"{_received_between(from_ms, to_ms)} AND ({where})" for where in listed]
            cluster = await check_mode(self.writer)
            return await erasure.delete_rows(self.writer, wheres, cluster, days)

    async def _recent_erasures(self, since_ms: int) -> Erasures:
        """(field, erasures, the last one's time in ms) of the erasures since `since_ms`."""
        out = await self.writer.query(erasure.recent_sql(since_ms), "JSONCompactEachRow")
        return [(f, int(n), int(ms)) for f, n, ms in json_rows(out)]

    async def _load_agents(self) -> dict[str, int]:
        """Enrich each distinct (user agent, agent_ip) of the good lines once and send them;
        return the good lines by invalid-traffic reason. The lines come back grouped by what
        else the rule reads, so the count costs no other scan (the grouping was a DISTINCT):
        analytics/ivt.classify makes of each group what IVT makes of its rows. Rows left out
        for an erasure are neither stored nor counted, and need no agent."""
        sql = (
            "SELECT s.user_agent, s.agent_ip, s.network, s.purpose != '', count() "
            f"FROM {self.stage} AS s WHERE s.reason = ''{self._erased} GROUP BY ALL"
        )
        out = await self.writer.query(sql, "JSONCompactEachRow")
        agents: dict[tuple[str, str], list[str | int]] = {}
        invalid: Counter[str] = Counter()
        for user_agent, agent_ip, network, speculative, rows in json_rows(out):
            agent = agents.get((user_agent, agent_ip))
            if agent is None:
                agent = agents[user_agent, agent_ip] = self.enricher.agent_row(user_agent, agent_ip)
            reason = ivt.classify(
                str(agent[MAIL_PROXY]), int(agent[IS_BOT]), network, "1" if speculative else ""
            )
            if reason:
                invalid[reason] += int(rows)
        if agents:  # none when every good row is left out for an erasure
            body = b"\n".join(map(orjson.dumps, agents.values()))
            await self.writer.load(self.agents, [body], "JSONCompactEachRow")
        return dict(invalid)

    async def _insert(self, token: str, where: str) -> None:
        staged = [f"s.{c}" for c, _, _ in STAGED if c not in STAGE_ONLY]
        added = [
            f"if(s.event_type = 'open', a.{c}, {OPEN_ONLY[c]})" if c in OPEN_ONLY else f"a.{c}"
            for c, _ in AGENT_COLUMNS[2:]
        ]
        select = (
            f"SELECT {', '.join([*staged, *added, IVT])} FROM {self.stage} AS s "
            f"ANY LEFT JOIN {self.agents} AS a "
            "ON s.user_agent = a.user_agent AND s.agent_ip = a.agent_ip "
            f"WHERE s.reason = ''{self._erased}{where}"
        )
        await self.writer.insert_from(EVENTS, EVENT_COLUMNS, select, token)

    async def _refill(self, token: str, oldest_ms: int, last_ms: int) -> tuple[int, int]:
        """Insert the batch's rows the table lacks under a fresh token; how many, and how
        many it left out: an erasure may have deleted them (erasure.erased_rows)."""
        # GLOBAL: through a Distributed `events` the shards cannot see this session's
        # temporary table, so the initiator sends them its ids (on one node it is a plain IN).
        # Within the batch's span: a copy of a line is stored with its time, and the
        # partitions and the sort key's time prune the read (event_id alone read the column
        # of every part of every month: 0.20-0.22 s against 0.023-0.026 s, 8 million rows).
        span = _received_between(oldest_ms, last_ms)
        stored = (
            f"s.event_id IN (SELECT event_id FROM {EVENTS} WHERE {span} "
            f"AND event_id GLOBAL IN (SELECT event_id FROM {self.stage}))"
        )
        gone = self._erased_match(self._seen, oldest_ms, missing=True)
        kept = f"NOT ({gone})" if gone else "1"
        out = await self.writer.query(
            f"SELECT countIf({kept}), count() FROM {self.stage} AS s "
            f"WHERE s.reason = ''{self._erased} AND NOT {stored}",
            "TSV",
        )
        # No row at all for none with empty_result_for_aggregation_by_empty_set on a server.
        missing, unstored = map(int, out.split() or (0, 0))
        if missing:
            fresh = f"{token[:187]}:{uuid.uuid4().hex[:12]}"
            await self._insert(fresh, f" AND NOT {stored} AND {kept}")
        return missing, unstored - missing

    async def _clear(self) -> None:
        """Free the batch's memory; a store that cannot is failing the batch already, and the
        next batch empties the tables before it stages."""
        self._dirty = True
        with contextlib.suppress(StoreError):
            await self._empty()

    async def _empty(self) -> None:
        for table in (self.lines, self.stage, self.agents):
            await self.writer.execute(f"TRUNCATE TABLE IF EXISTS {table}")
        self._dirty = False
