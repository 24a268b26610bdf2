"""Inserting a replayed batch: under its token, then what the store still lacks.

A batch is replayed when a consumer died (or lost its partition) between recording it (the
spool checkpoint, the Kafka commit metadata) and committing past it. Its token makes the store
drop the repeat of a batch that landed, also one still landing from a revoked owner. But the
token alone is not proof: an embedded store (chDB) killed in the middle of an insert can keep
the token and lose the rows, and the replay would be dropped as a duplicate. So after the
insert the event ids are checked, and rows still missing go in under a fresh token.
"""

from __future__ import annotations

import uuid

from analytics.schema import EVENTS
from analytics.store import Writer
from consumers.event_rows import EventRows

# Event ids per lookup: ~80 KB of SQL, under ClickHouse's default max_query_size (256 KiB).
IDS_PER_LOOKUP = 2000


async def insert_replay(writer: Writer, rows: EventRows, token: str) -> int:
    """Insert a replayed batch; returns the rows that had to go in under a fresh token."""
    await writer.insert(EVENTS, rows, token)
    missing = await unstored(writer, rows)
    if len(missing):
        await writer.insert(EVENTS, missing, fresh_token(token))
    return len(missing)


async def unstored(writer: Writer, rows: EventRows) -> EventRows:
    """The rows whose event ids are not in the events table yet."""
    events = rows.events
    stored: set[str] = set()
    for at in range(0, len(events), IDS_PER_LOOKUP):
        # Ids passed enrich.decode's UUID check: safe to quote as they are.
        ids = ",".join(f"'{e['event_id']}'" for e in events[at : at + IDS_PER_LOOKUP])
        sql = f"SELECT DISTINCT toString(event_id) FROM {EVENTS} WHERE event_id IN ({ids})"
        stored.update((await writer.query(sql, "TSV")).split())
    if not stored:
        return rows
    return EventRows.build([e for e in events if e["event_id"] not in stored])[0]


def fresh_token(token: str) -> str:
    """The batch's token with a random suffix (writers.TOKEN_RE allows ':')."""
    return f"{token[:187]}:{uuid.uuid4().hex[:12]}"
