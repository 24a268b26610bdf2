"""The distributed path end to end: `beacon run` with a Kafka bootstrap set.

Pixels -> collector (Kafka sink) -> real broker -> consumer group -> ClickHouse (chDB).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support.beacon_run import Beacon, send_mix, wait_for_rows


@pytest.fixture
def kafka_beacon(tmp_path: Path, kafka_bootstrap: str, kafka_topic: str) -> Iterator[Beacon]:
    with Beacon(
        tmp_path / "data",
        {
            "BEACON_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "BEACON_KAFKA_TOPIC": kafka_topic,
            "BEACON_KAFKA_DLQ_TOPIC": kafka_topic + ".dlq",
            "BEACON_KAFKA_GROUP": "group-" + kafka_topic,
        },
    ) as b:
        yield b


async def test_pixels_through_kafka_land_once_with_every_field(kafka_beacon: Beacon) -> None:
    b = kafka_beacon
    expected = await send_mix(b.base)
    detailed = {
        "e": "conversion", "s": "shop", "c": "x-mas", "m": "m-7", "r": "r-7", "ad": "ad-7",
        "u": "https://shop.example/cart?utm_medium=email&token=secret",
        "ref": "https://mail.example/inbox?id=1", "p.value": "19.99", "p.currency": "EUR",
    }  # fmt: skip
    ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{b.base}/p.gif", params=detailed, headers={"User-Agent": ua}) as r:
            assert r.status == 200
    total = sum(expected.values()) + 1
    assert await wait_for_rows(b, total) == total
    await asyncio.sleep(1.0)  # a double or a stored junk event would show by now
    assert int(b.query("SELECT count() FROM beacon.events")) == total
    assert int(b.query("SELECT uniqExact(event_id) FROM beacon.events")) == total

    row = orjson.loads(
        b.query(
            "SELECT * EXCEPT (inserted_at) FROM beacon.events WHERE campaign = 'x-mas'",
            "JSONEachRow",
        )
    )
    assert (row["event_type"], row["site"], row["message"]) == ("conversion", "shop", "m-7")
    assert (row["recipient"], row["ad"]) == ("r-7", "ad-7")
    assert (row["url_host"], row["url_path"]) == ("shop.example", "/cart")
    assert row["url_query"] == "utm_medium=email"
    assert row["referrer"] == "https://mail.example/inbox"
    assert row["props"] == {"value": "19.99", "currency": "EUR"}
    assert row["user_agent"] == ua and row["browser"] == "Chrome" and row["os"] == "Windows"
    assert row["ip"] == "127.0.0.0" and row["visitor_id"] > 0 and row["transport"] == "pixel"
    assert b.stop() == 0
