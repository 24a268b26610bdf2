"""Schema migration 10: beacon.events sorted by arrival time before the event id.

The sort key was (site, day, event type, event id). ClickHouse does not order UUIDs by their
time bits, so every batch spread over the whole id range and each merge interleaved all its
parts row by row: merging cost more than inserting (docs/performance.md "Consumer"). With
`received_at` before `event_id`, batches of time-ordered traffic make parts that follow one
another and merge almost as a copy. Deduplication is unchanged: a replayed event carries the
same time and id, so its key is the same.

A table's sort key cannot be changed in place, so the table is copied into a new one with the
new key, the two are exchanged (the rollups' views follow the name) and the old one dropped.
Only the embedded store is copied: its owner runs the migration before it inserts anything,
and nothing else can open it, so no row arrives meanwhile. On a ClickHouse server consumers of
the release before may still be inserting during a rolling upgrade, and a row they put into
the old table after the copy would go with it; a cluster would need the copy on every shard.
Those keep their key and say so once; docs/operations.md "Upgrades" has the statements to run
with the consumers stopped. A store made since has the key from the start (analytics/schema.py).
"""

from __future__ import annotations

import logging

from analytics.schema import DATABASE, EVENTS, EVENTS_SORT_KEY
from analytics.store import Writer, cluster_of

log = logging.getLogger("beacon.store")

OLD_KEY = "site, toDate(received_at), event_type, event_id"
REKEYED = f"{DATABASE}.events_rekeyed"


async def sort_key(writer: Writer, table: str = "events") -> str:
    out = await writer.query(
        f"SELECT sorting_key FROM system.tables WHERE database = '{DATABASE}' AND name = '{table}'",
        "TSVRaw",
    )
    return out.strip()


async def rekey_events(writer: Writer) -> None:
    """Copy beacon.events into a table sorted by EVENTS_SORT_KEY and put it in its place. Safe
    to rerun: a copy left by a stop before the exchange is dropped and made again; after it,
    the key is the new one and nothing is done."""
    cluster = cluster_of(writer) is not None
    if cluster or not getattr(writer, "exclusive", False):
        if await sort_key(writer, "events_local" if cluster else "events") != EVENTS_SORT_KEY:
            log.warning(
                "beacon.events keeps its sort key (%s): sorting by arrival time too makes "
                'merges far cheaper; docs/operations.md "Upgrades" has the copy to run with '
                "the consumers stopped",
                OLD_KEY,
            )
        return
    await writer.execute(f"DROP TABLE IF EXISTS {REKEYED}")
    if await sort_key(writer) == EVENTS_SORT_KEY:
        return
    create = await writer.query(f"SHOW CREATE TABLE {EVENTS}", "TSVRaw")
    old_order = f"ORDER BY ({OLD_KEY})"
    if old_order not in create:
        raise ValueError(f"{EVENTS}: not the sort key migration 10 expects: {create[:300]!r}")
    create = create.replace(f"CREATE TABLE {EVENTS}\n", f"CREATE TABLE {REKEYED}\n", 1)
    await writer.execute(create.replace(old_order, f"ORDER BY ({EVENTS_SORT_KEY})"))
    # As stored: copies of a replayed event stay until a merge, as they would have.
    await writer.execute(
        f"INSERT INTO {REKEYED} SELECT * FROM {EVENTS} "
        "SETTINGS optimize_on_insert = 0, async_insert = 0"
    )
    await writer.execute(f"EXCHANGE TABLES {EVENTS} AND {REKEYED}")
    await writer.execute(f"DROP TABLE {REKEYED}")
