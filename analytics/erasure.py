"""Data subject requests: erase or export one person's (or one site's) events, audited.

The statement is built here from a field name out of a fixed table and a quoted literal:
no SQL ever comes from whoever asks. Erasure is ClickHouse's lightweight DELETE, which hides
the rows at once and drops them from disk at the next merges of their parts:
https://clickhouse.com/docs/sql-reference/statements/delete

Each erasure is recorded first in beacon.erasures (a hash of the id and the time), and the
consumer leaves out the rows of an erased person received before that time: events still in
the spool or in Kafka then, and a batch replayed after a crash, whose check of the stored ids
would otherwise find the erased rows missing and store them again (consumers/ingest.py).
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import orjson

from analytics.cluster import check_mode
from analytics.report_window import sql_string
from analytics.rollup_settle import due_before_erasure, rebuild_after_erasure
from analytics.schema import ERASURES, EVENTS
from analytics.store import Cluster, Writer, quorum_of, whole_days
from contract.numbers import parse_uint
from contract.text import CONTROL_RE

# What a request may name -> the column it matches.
FIELDS = {"recipient": "recipient", "visitor": "visitor_id", "site": "site"}
MAX_VALUE_CHARS = 256  # the collector's id limit (collector/event.py MAX_ID_CHARS)
HOUR_MS = 3_600_000
NEVER_MS = -(2**63)  # Int64's least: before any row's received_at
UINT64_MAX = 2**64 - 1


class RequestError(ValueError):
    """The request cannot be run; `reason` is a short label for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def condition(field: str, value: str) -> str:
    """`column = literal` for a request; raises RequestError for anything else."""
    return "{} = {}".format(*subject(field, value))


def subject(field: str, value: str) -> tuple[str, str]:
    """The column and the SQL literal a request names; raises RequestError for anything else."""
    column = FIELDS.get(field)
    if column is None:
        raise RequestError("unknown_field")
    if not isinstance(value, str) or not value:
        raise RequestError("empty_value")
    if len(value) > MAX_VALUE_CHARS:
        raise RequestError("value_too_long")
    if CONTROL_RE.search(value):
        raise RequestError("control_chars")  # never stored (collector/sanitize.py): no match
    if column == "visitor_id":
        # A visitor id is a UInt64: the cookie's value, or a number read from a report.
        visitor_id = parse_uint(value, UINT64_MAX, min_value=1)
        if visitor_id is None:
            raise RequestError("bad_visitor_id")
        return column, str(visitor_id)
    return column, sql_string(value)


def hashed(expr: str) -> str:
    """The hash an erasure keeps of an id: of its text, so a visitor id's number and the
    column's value hash alike."""
    return f"sipHash64(toString({expr}))"


def record_statement(
    field: str, value: str, at_ms: int, cluster: Cluster | None = None, quorum: str = ""
) -> str:
    """The INSERT that records an erasure of `field` = `value` at `at_ms` (the store's clock,
    ms since the epoch)."""
    _, literal = subject(field, value)
    # On a cluster, into the shards before the statement returns (a Distributed table
    # queues inserts by default) and on a quorum of each shard's replicas, as the events
    # are: a consumer reading another replica sees it from its next batch on. Replicas
    # behind one address: on their quorum too (`quorum`, HttpWriter's).
    if cluster:
        quorum = cluster.insert_quorum
    settings = "distributed_foreground_insert = 1, " if cluster else ""
    settings = f"SETTINGS {settings}insert_quorum = '{quorum}' " if quorum else ""
    return (
        f"INSERT INTO {ERASURES} (field, value_hash, erased_at) {settings}"
        f"SELECT {sql_string(field)}, {hashed(literal)}, "
        f"fromUnixTimestamp64Milli({int(at_ms)}, 'UTC')"
    )


def _since(since_ms: int) -> str:
    return f"erased_at >= fromUnixTimestamp64Milli({int(since_ms)}, 'UTC')"


def recent_sql(since_ms: int) -> str:
    """Per field, how many erasures were recorded at or after `since_ms` (ms since the
    epoch) and the last one's time (ms): which to look for, and whether more came since."""
    return (
        f"SELECT field, count(), toUnixTimestamp64Milli(max(erased_at)) FROM {ERASURES} "
        f"WHERE {_since(since_ms)} GROUP BY field ORDER BY field"
    )


def recorded_sql(since_ms: int) -> str:
    """(field, id hash, time in ms) of each id erased at or after `since_ms`, its last time."""
    return (
        f"SELECT field, value_hash, toUnixTimestamp64Milli(max(erased_at)) FROM {ERASURES} "
        f"WHERE {_since(since_ms)} GROUP BY field, value_hash"
    )


def erased_rows(fields: list[str], alias: str, since_ms: int, missing: bool = False) -> str:
    """A condition true for a row (of table `alias`, with the events' columns) whose person
    was erased at or after its received_at, by the erasures of `fields` recorded at or after
    `since_ms`; "" for none. The erasures are read by the statement itself, as arrays of id
    hashes and times (a map per row, whatever their number: no term per erasure). `missing`:
    for a row a replay finds missing from the table, which an erasure may have deleted (see
    _erased_term)."""
    terms = []
    for field in fields:
        erased = (
            "(SELECT (groupArray(h), groupArray(t)) FROM (SELECT value_hash AS h, "
            f"toUnixTimestamp64Milli(max(erased_at)) AS t FROM {ERASURES} "
            f"WHERE field = {sql_string(field)} AND {_since(since_ms)} GROUP BY h))"
        )
        terms.append(_erased_term(field, f"{alias}.", f"{erased}.1", f"{erased}.2", missing))
    return " OR ".join(t for t in terms if t)


def listed_rows(erased: Mapping[str, Mapping[int, int]]) -> list[str]:
    """The same condition, over the events table's own columns, for the ids `erased` lists:
    {field: {id hash: time in ms}}, and rows stored a second or more before their erasure
    whatever their time says, as `erase` deletes them; as conditions of at most
    LISTED_IDS_MAX ids each (none for none), which together hold every such row."""
    terms = []
    for field, by_hash in erased.items():
        items = list(by_hash.items())
        for at in range(0, len(items), LISTED_IDS_MAX):
            part = items[at : at + LISTED_IDS_MAX]
            hashes = f"[{', '.join(str(h) for h, _ in part)}]::Array(UInt64)"
            times = f"[{', '.join(str(t) for _, t in part)}]::Array(Int64)"
            terms.append(_erased_term(field, "", hashes, times, stored=True))
    return [t for t in terms if t]


# Ids one condition of listed_rows names at most: each takes ~75 bytes of the statement, and
# ClickHouse parses at most max_query_size (256 KiB by default) of one. A DELETE reads its ids
# from the statement's text: on a cluster, a mutation's condition may not read another table.
LISTED_IDS_MAX = 1000


def stored_before(erased_ms: str) -> str:
    """A row stored a second or more before the erasure at `erased_ms` (an SQL expression of
    ms): in whole seconds, as inserted_at keeps them, the erasure's own left to received_at."""
    return f"toUnixTimestamp(inserted_at) < intDiv({erased_ms}, 1000)"


def _erased_term(
    field: str, prefix: str, hashes: str, times: str, missing: bool = False, stored: bool = False
) -> str:
    """`stored`: also a row stored before its erasure whatever its time says (stored_before;
    the events table's rows have inserted_at, a batch's staged ones not yet). `missing`: a
    row a replay finds missing (below)."""
    column = FIELDS.get(field)
    if column is None:
        return ""  # a request kind this version does not know
    # A row kept without consent has its time cut to the hour (collector/consent.py): it
    # may have come up to an hour later, so it is left out only if that was before too.
    # Such a row holds no id of a person: only a site erasure can match it. But one a replay
    # finds missing may be missing because the erasure's DELETE took it (by its time, the
    # hour's start: `erase`), so it is left out of the refill if its hour began before.
    received = f"toUnixTimestamp64Milli({prefix}received_at)"
    late = f"if({prefix}consent = 'missing', {received} + {HOUR_MS}, {received})"
    at = received if missing else late
    # In milliseconds, so that an id never erased (the default) is before every row, even
    # one of a producer that wrote a received_at at the epoch (or before it, stored by an
    # older consumer: refused now).
    erased_ms = f"transform({hashed(prefix + column)}, {hashes}, {times}, toInt64({NEVER_MS}))"
    term = f"{at} <= {erased_ms}"
    return f"({term} OR {stored_before(erased_ms)})" if stored else term


async def erase(writer: Writer, field: str, value: str) -> int:
    """Delete every row where `field` is `value` received up to the erasure; how many rows.

    Counted before the DELETE (without FINAL: every stored copy is a row removed). The
    DELETE waits for its mutation (lightweight_deletes_sync defaults to 2), so the rows are
    gone from every query once this returns. On a cluster (cluster mode, analytics/cluster.py)
    a Distributed table refuses DELETE: see delete_statement.
    """
    column, literal = subject(field, value)
    cluster = await check_mode(writer)
    # One time, the store's, for the record and the DELETE (read back, a record not yet on the
    # replica asked would give none).
    at_ms = int(await writer.query("SELECT toUnixTimestamp64Milli(now64(3))", "TSV"))
    # First, whether or not anything is stored yet: what is on its way is then left out.
    await writer.execute(record_statement(field, value, at_ms, cluster, quorum_of(writer)))
    # The rows received up to the erasure, as the consumer leaves them out: one of the
    # person's received after it (they came back) is stored, and stays, in the events and in
    # the rollups of its day, which the DELETE would otherwise take and the rebuild not see.
    # And every row stored before it, whatever its time says (a collector's clock ahead).
    until = f"fromUnixTimestamp64Milli({at_ms}, 'UTC')"
    where = f"{column} = {literal} AND (received_at <= {until} OR {stored_before(str(at_ms))})"
    return await delete_rows(writer, [where], cluster)


async def delete_rows(
    writer: Writer, wheres: list[str], cluster: Cluster | None, also_days: Iterable[str] = ()
) -> int:
    """Delete the events any of `wheres` holds and rebuild the rollups of their days, and of
    `also_days` (ISO dates) whatever they hold; how many rows."""
    also = set(also_days)
    rows, days = 0, set[str]()
    for where in wheres:  # each counted after the DELETEs before it: a row counts once
        # Its days and how many on each, in one scan of what `where` reads. This and the
        # DELETE read whole months: held to the store's day timeout.
        with whole_days():
            by_day = await writer.query(
                f"SELECT toDate(received_at), count() FROM {EVENTS} WHERE {where} GROUP BY 1",
                "TSV",
            )
        counts = dict(line.split("\t") for line in by_day.splitlines())
        if not counts:
            continue
        # Right before each DELETE (due_before_erasure): a settling pass between two of them
        # may have marked a day done that the next one deletes from.
        await due_before_erasure(writer, sorted(counts.keys() | also))
        days |= counts.keys() | also
        rows += sum(map(int, counts.values()))
        with whole_days():
            await writer.execute(delete_statement(where, cluster))
    if not days and also:
        await due_before_erasure(writer, sorted(also))
    days |= also
    if days:
        # The rollups of those days still count the rows (and hold their hashes): recompute
        # them from what is left, on each shard of a cluster (analytics/rollup_settle.py).
        await rebuild_after_erasure(writer, days)
    return rows


def delete_statement(where: str, cluster: Cluster | None) -> str:
    """The DELETE of the rows `where` holds: lightweight on one server; on a cluster, a
    mutation of events_local ON CLUSTER, which ClickHouse runs once per shard (on one replica,
    and the replicas follow: a lightweight DELETE ON CLUSTER would run on every replica), and
    waits for every replica of each shard (mutations_sync = 2):
    https://clickhouse.com/docs/sql-reference/statements/alter/delete
    """
    if cluster is None:
        return f"DELETE FROM {EVENTS} WHERE {where}"
    return (
        f"ALTER TABLE {EVENTS}_local {cluster.on} DELETE WHERE {where} SETTINGS mutations_sync = 2"
    )


def export_sql(field: str, value: str) -> str:
    """Every stored event of one person, oldest first, with every column."""
    # FINAL: a row replayed twice into the table is one event to the person asking.
    return f"SELECT * FROM {EVENTS} FINAL WHERE {condition(field, value)} ORDER BY received_at"


def actor() -> str:
    """Who runs this: the OS user, for the audit line."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        return f"uid:{os.getuid()}"


def open_audit(path: Path) -> int:
    """The audit log opened for appending (created 0600: it names people by their ids)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def check_audit(path: Path) -> None:
    """Raise OSError unless the audit log can be written: checked before erasing, so no
    erasure goes unrecorded for want of a writable log."""
    os.close(open_audit(path))


def audit(
    path: Path, action: str, field: str, value: str, rows: int, via: str, by: str
) -> dict[str, object]:
    """Append one JSON line to the audit log and return it.

    The line holds the id asked for and nothing else personal: it is the record that the
    request was carried out (GDPR art. 5(2), accountability), not a copy of the data.
    One write to a file opened O_APPEND, then fsync: lines from several processes never mix,
    and a line that was written survives a crash.
    """
    line = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "action": action,
        "field": field,
        "value": value,
        "rows": rows,
        "via": via,
        "by": CONTROL_RE.sub("", by)[:MAX_VALUE_CHARS],
    }
    fd = open_audit(path)
    try:
        os.write(fd, orjson.dumps(line) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return line
