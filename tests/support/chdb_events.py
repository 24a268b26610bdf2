"""A migrated chDB store in a temp directory, filled with wire events through the Enricher."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from analytics import erasure
from analytics.migrations import migrate
from analytics.schema import EVENTS
from analytics.store import json_rows
from analytics.store.chdb import ChdbWriter
from analytics.store.readers import ChdbReader, ReadLimits
from collector.event import SCHEMA_VERSION, build_event, uuid7
from consumers.enrich import Enricher

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.109 Safari/537.36"
)

READ_LIMITS = ReadLimits(timeout_s=30, max_result_bytes=64 * 1024 * 1024)
TEST_UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"
START_MS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z: a fixed, non-round millisecond


def mail_opens(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Email opens as the collector builds them, each with its own millisecond and props."""
    return [
        build_event(
            {"e": "open", "s": "shop", "c": f"spring-{i % 3}", "r": f"rcpt-{i}"},
            {"n": str(i), "color": "red"},
            page_url=f"https://shop.example/p/{i}?utm_source=mail&email=x@y.z",
            user_agent=TEST_UA,
            ip="203.0.113.0",
            visitor_id=i + 1,
            dnt=i % 2 == 0,
            transport="pixel",
            received_ms=START_MS + i * 37,
            keep_query=frozenset(),
            notes=[],
        )
        for i in range(start, start + count)
    ]


def hour_ago_ms() -> int:
    """A base time inside every report window."""
    return time.time_ns() // 1_000_000 - 3_600_000


def wire(event_type: str, at_ms: int, **fields: Any) -> dict[str, Any]:
    """A wire event as the collector makes it (only the fields a test cares about)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": uuid7(at_ms),
        "received_at": at_ms,
        "event_type": event_type,
        "user_agent": BROWSER,
        "ip": "203.0.113.0",
        **fields,
    }


class Store:
    """One chDB session for a test module: events in, JSONEachRow text out."""

    def __init__(self, path: Path, migrated: bool = False) -> None:
        self.writer = ChdbWriter(path)
        if not migrated:
            asyncio.run(migrate(self.writer, retention_days=0))
        self.enricher = Enricher()
        self._reader: ChdbReader | None = None

    def reader(self) -> ChdbReader:
        """The read-only side of this store, as the store port reads it."""
        if self._reader is None:
            self._reader = ChdbReader(self.writer.path, READ_LIMITS)
        return self._reader

    def add(self, events: list[dict[str, Any]]) -> None:
        body = b"".join(self.enricher.to_row(orjson.dumps(e)) + b"\n" for e in events)
        self.writer.query_sync(
            f"INSERT INTO {EVENTS} SETTINGS async_insert = 0 FORMAT JSONEachRow\n" + body.decode(),
            "TSV",
        )

    def query(self, sql: str) -> str:
        return self.writer.query_sync(sql, "JSONEachRow")

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return json_rows(self.query(sql))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close_sync()
        self.writer.close_sync()


class ErasedBeforeTheInsert:
    """The store as an erasure finds it when it comes while a batch is on its way: recorded
    and its DELETE run after the batch read the erasures, before the batch's insert lands."""

    def __init__(self, writer: object, field: str, value: str) -> None:
        self.writer, self.field, self.value = writer, field, value
        self.erased: int | None = None

    async def insert_from(self, *args: object) -> None:
        if self.erased is None:
            self.erased = await erasure.erase(self.writer, self.field, self.value)  # type: ignore[arg-type]
        await self.writer.insert_from(*args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.writer, name)
