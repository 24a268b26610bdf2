"""The ingest reports the received_at of the newest event it stored (consumers/ingest.py
Stored.newest_ms), from the same scan that counts the good lines: the consumer's lag in seconds
and the data-freshness alert count from it. Rows kept without consent, whose time is cut to the
hour, and refused lines say nothing of freshness and are left out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from consumers.ingest import Ingest
from tests.support.chdb_events import Store, hour_ago_ms, wire


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    made = Store(tmp_path / "store")
    yield made
    made.close()


def body(*lines: bytes) -> list[bytes]:
    return [b"\n".join(lines)]


async def test_newest_is_the_latest_exact_time_stored(store: Store) -> None:
    at = hour_ago_ms()
    lines = (
        orjson.dumps(wire("open", at + 7, consent="granted")),
        orjson.dumps(wire("open", at)),
        # Kept without consent: its time is cut to the hour, and here set later than the rest.
        orjson.dumps(wire("pageview", at + 60_000, consent="missing")),
        orjson.dumps({**wire("open", at + 90_000), "event_id": "not-a-uuid"}),  # refused
        b"{not json",
    )
    stored = await Ingest(store.writer).store(body(*lines), "newest-1")
    assert (stored.rows, [reason for _, reason in stored.rejects]) == (
        3,
        ["bad_event_id", "malformed_json"],
    )
    assert stored.newest_ms == at + 7


async def test_a_batch_without_an_exact_time_reports_none(store: Store) -> None:
    at = hour_ago_ms()
    aggregate = await Ingest(store.writer).store(
        body(orjson.dumps(wire("open", at, consent="missing"))), "newest-2"
    )
    assert (aggregate.rows, aggregate.newest_ms) == (1, 0)
    refused = await Ingest(store.writer).store(body(b"[1, 2]", b"{bad"), "newest-3")
    assert (refused.rows, refused.newest_ms) == (0, 0)
