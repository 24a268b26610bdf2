"""KafkaSink and `beacon kafka init` against the session's real Kafka broker."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from dataclasses import replace
from itertools import accumulate
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from beacon.__main__ import main
from collector.app import create_app
from collector.kafka_admin import init_topics
from collector.metrics import CollectorMetrics
from collector.server import make_sink
from collector.settings import SPOOL_MIN_BYTES, Settings, SettingsError
from collector.sinks.kafka import KafkaSink
from collector.sinks.kafka_link import KafkaLink, Sent
from collector.sinks.spool import SpoolSink
from collector.spool.replay import read_part
from collector.spool.writer import spool_limits
from tests.support.helpers import free_port, metric_value
from tests.support.kafka_sink import (
    EVENT_FIELDS,
    UA,
    RecordingSink,
    events_in,
    fire_pixels,
    kafka_sink,
    read_topic,
    spooled_events,
    wait_for,
)


async def test_pixels_land_in_the_topic_intact_and_spread(
    make_client, settings, metrics, kafka_bootstrap, kafka_topic
):
    kafka = {
        "kafka_bootstrap": kafka_bootstrap,
        "kafka_topic": kafka_topic,
        "kafka_batch_max_bytes": 4096,  # a few events per batch: many batches, all partitions
        "kafka_record_max_bytes": 1024,  # a few events per record
    }
    sink = RecordingSink(kafka_sink(replace(settings, **kafka), metrics))
    client = await make_client(sink=sink, **kafka)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    assert (await client.get("/readyz")).status == 200

    count = 0
    for _ in range(6):  # waves, so several buffer drains and pump rounds take part
        await fire_pixels(client, count, 50)
        count += 50
        await asyncio.sleep(0.03)
    await client.close()  # the SIGTERM path: buffer flushed to the sink, sink closed

    records = await read_topic(kafka_bootstrap, kafka_topic)
    events = events_in(records)
    assert len(events) == count == len(sink.events)
    assert sorted(events) == sorted(sink.events)  # byte for byte
    assert {r.partition for r in records} == {0, 1, 2}
    # NDJSON chunks: several events a record, none over the bound unless alone
    assert len(records) < count
    assert all(len(r.value) <= 1024 or b"\n" not in r.value for r in records)
    by_recipient = {}
    for line in events:
        event = orjson.loads(line)
        assert set(event) == EVENT_FIELDS
        by_recipient[event["recipient"]] = event
    assert len(by_recipient) == count
    event = by_recipient["r-7"]
    assert event["event_type"] == "open" and event["site"] == "shop"
    assert event["campaign"] == "spring" and event["message"] == "m-7" and event["ad"] == "ad-1"
    assert (event["url_host"], event["url_path"]) == ("shop.example", "/p/7")
    assert event["url_query"] == "utm_source=mail"
    assert event["props"] == {"n": "7"} and event["user_agent"] == UA
    assert event["ip"] == "127.0.0.0" and event["transport"] == "pixel"
    assert uuid.UUID(event["event_id"]).version == 7
    assert len(set(events)) == count

    assert metric_value(metrics, "beacon_kafka_events_total", outcome="acked") == count
    assert metric_value(metrics, "beacon_kafka_replayed_events_total") == 0
    assert metric_value(metrics, "beacon_kafka_produce_seconds_count") > 1
    assert metric_value(metrics, "beacon_kafka_batch_records_sum") == count
    for reason in ("kafka_down", "timeout", "queue_full"):
        assert metric_value(metrics, "beacon_kafka_spilled_events_total", reason=reason) == 0
    assert metric_value(metrics, "beacon_kafka_queue_bytes") == 0


async def test_close_with_kafka_unreachable_spools_everything(make_client, settings, metrics):
    # Nothing listens on this port: producer.start() fails and keeps being retried meanwhile.
    kafka = {"kafka_bootstrap": f"127.0.0.1:{free_port()}"}
    sink = RecordingSink(kafka_sink(replace(settings, **kafka), metrics))
    client = await make_client(sink=sink, **kafka)
    await fire_pixels(client, 0, 120)
    # Ready all the same: the spool takes the events until Kafka answers.
    assert not sink.connected()
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/healthz")).status == 200
    await client.close()

    assert len(sink.events) == 120
    assert spooled_events(settings.spool_dir) == sink.events  # all of them, in order
    assert metric_value(metrics, "beacon_kafka_spilled_events_total", reason="kafka_down") == 120
    assert metric_value(metrics, "beacon_kafka_up") == 0
    assert not any(p.name.endswith(".open") for p in settings.spool_dir.iterdir())


async def test_queue_over_its_bound_spills_to_the_spool(
    settings, metrics, kafka_bootstrap, kafka_topic
):
    bounded = replace(
        settings,
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=kafka_topic,
        kafka_buffer_max_bytes=1 << 16,
    )
    sink = kafka_sink(bounded, metrics)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    events = [orjson.dumps({"event_id": str(i), "pad": "x" * 1000}) for i in range(200)]
    await sink.send(events)  # ~200 KB at once against a 64 KiB bound
    await sink.close()

    spilled = metric_value(metrics, "beacon_kafka_spilled_events_total", reason="queue_full")
    assert 0 < spilled < len(events)
    # The spool's part went to Kafka as the sink closed (Kafka up): every event there once.
    assert metric_value(metrics, "beacon_kafka_replayed_events_total") == spilled
    assert metric_value(metrics, "beacon_kafka_events_total", outcome="acked") == len(events)
    assert sorted(events_in(await read_topic(kafka_bootstrap, kafka_topic))) == sorted(events)
    assert spooled_events(settings.spool_dir) == []


async def test_a_spool_disk_that_stalls_at_its_flush_holds_back_no_event_from_kafka(
    make_client, settings, metrics, kafka_bootstrap, kafka_topic
):
    kafka = {
        "kafka_bootstrap": kafka_bootstrap,
        "kafka_topic": kafka_topic,
        "flush_interval_ms": 50,
    }
    inner = kafka_sink(replace(settings, **kafka), metrics)
    sink = RecordingSink(inner)
    stalled, release = threading.Event(), threading.Event()
    flush_on_disk = inner.spool._flush

    def stuck_disk(final: bool) -> None:  # an fsync that does not return (a hung volume)
        if not final:
            stalled.set()
            release.wait(120)
        flush_on_disk(final)

    inner.spool._flush = stuck_disk  # type: ignore[method-assign]
    client = await make_client(sink=sink, **kafka)
    try:
        await wait_for(sink.connected, 30, "the sink to reach Kafka")
        await wait_for(stalled.is_set, 30, "the buffer to flush the spool")
        for wave in range(4):  # past one flush interval: the buffer drains on meanwhile
            await fire_pixels(client, wave * 50, 50)
            await asyncio.sleep(0.1)

        def acked() -> float:
            return metric_value(metrics, "beacon_kafka_events_total", outcome="acked")

        await wait_for(lambda: acked() == 200, 60, "every event acked with the flush stuck")
        assert stalled.is_set() and not release.is_set()  # still stuck all along
        assert metric_value(metrics, "beacon_events_dropped_total", reason="buffer_full") == 0
        assert (await client.get("/readyz")).status == 200
    finally:
        release.set()
    await client.close()

    assert sorted(events_in(await read_topic(kafka_bootstrap, kafka_topic))) == sorted(sink.events)
    assert len(sink.events) == 200


def test_kafka_init_creates_both_topics_and_is_idempotent(kafka_bootstrap, capsys):
    name = f"init.{uuid.uuid4().hex[:8]}"
    env = {
        "BEACON_KAFKA_TOPIC": name,
        "BEACON_KAFKA_DLQ_TOPIC": name + ".dlq",
        "BEACON_KAFKA_PARTITIONS": "4",
        # One broker: one copy of each partition, and an acks=all write waits for that one.
        "BEACON_KAFKA_REPLICATION": "1",
        "BEACON_KAFKA_MIN_INSYNC_REPLICAS": "1",
    }
    argv = ["kafka", "init", "--kafka-bootstrap", kafka_bootstrap]
    assert main(argv, env) == 0
    out = capsys.readouterr().out
    assert f"{name}: created (4 partitions, 1 replica, " in out
    assert f"{name}.dlq: created (4 partitions, 1 replica, " in out

    assert main(argv, env) == 0  # again: nothing to do, and it says so
    out = capsys.readouterr().out
    assert f"{name}: exists (4 partitions, 1 replica, " in out
    assert f"{name}.dlq: exists (4 partitions, 1 replica, " in out

    async def describe() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            topics = await admin.describe_topics([name, name + ".dlq"])
        finally:
            await admin.close()
        return {t["topic"]: len(t["partitions"]) for t in topics}

    assert asyncio.run(describe()) == {name: 4, name + ".dlq": 4}


def test_kafka_init_says_when_the_broker_is_unreachable(capsys):
    argv = ["kafka", "init", "--kafka-bootstrap", f"127.0.0.1:{free_port()}"]
    assert main(argv, {}) == 1
    err = capsys.readouterr().err
    assert "cannot reach Kafka at 127.0.0.1:" in err
    assert main(["kafka", "init"], {}) == 1
    assert "BEACON_KAFKA_BOOTSTRAP is empty" in capsys.readouterr().err


async def test_make_sink_picks_kafka_when_a_bootstrap_is_set(settings, metrics):
    unreachable = f"127.0.0.1:{free_port()}"
    assert isinstance(make_sink(replace(settings, sink="auto"), metrics), SpoolSink)
    with pytest.raises(SettingsError, match="BEACON_KAFKA_BOOTSTRAP"):
        make_sink(replace(settings, sink="kafka"), metrics)
    for choice in ("auto", "kafka"):
        sink = make_sink(replace(settings, sink=choice, kafka_bootstrap=unreachable), metrics)
        assert isinstance(sink, KafkaSink)
        await sink.close()


async def test_a_kafka_slower_than_the_intake_with_the_spool_full_is_not_ready(
    settings, metrics, kafka_bootstrap, kafka_topic, monkeypatch
):
    # Kafka up and answering, too slowly: the queue full, the spool full, every event
    # dropped, and readiness said 200 since the link was up.
    live = replace(
        settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=kafka_topic,
        kafka_buffer_max_bytes=1 << 16, spool_max_bytes=1 << 20,
    )  # fmt: skip
    sink = kafka_sink(live, metrics)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    acks: list[asyncio.Future[None]] = []

    async def slow(events, deadline_s):  # type: ignore[no-untyped-def]
        acks.append(asyncio.get_running_loop().create_future())  # answered at the end only
        return [Sent(events, sum(map(len, events)), acks[-1], time.monotonic(), deadline_s)], []

    monkeypatch.setattr(sink.link, "produce", slow)
    assert sink.healthy()
    event = orjson.dumps({"event_id": "x", "pad": "p" * 1000})
    for _ in range(40):  # ~2.5 MB: the queue's 64 KiB, the spool's 1 MiB, the rest dropped
        await sink.send([event] * 60)
    assert metric_value(metrics, "beacon_events_dropped_total", reason="spool_full") > 0
    # Spilled: what the spool took, not the events it refused too.
    spooled = metric_value(metrics, "beacon_sink_events_total", outcome="spooled")
    assert 0 < sum(spilled(metrics, r) for r in ("queue_full", "kafka_down", "timeout")) == spooled
    assert sink.connected() and not sink.healthy()
    for ack in acks:
        ack.set_result(None)
    await wait_for(sink.healthy, 30, "room in the queue again")
    monkeypatch.undo()
    await sink.close()


async def test_an_ack_whose_wait_was_cancelled_is_still_retrieved(settings, metrics, caplog):
    # A drain's time running out cancels the waits; the producer's stop then fails the
    # batches, each logged as an exception never retrieved.
    link = KafkaLink(settings, metrics)
    ack = asyncio.get_running_loop().create_future()
    sent = Sent([b"{}"], 2, ack, time.monotonic(), time.monotonic() + 60)
    waiting = asyncio.create_task(link.wait_ack(sent))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    ack.set_exception(KafkaError("the producer stopped"))
    await asyncio.sleep(0)  # the done callbacks run
    del ack, sent, waiting
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_missing_topic_spools_until_kafka_init_then_replays(
    settings, metrics, kafka_bootstrap, caplog
):
    name = f"late.{uuid.uuid4().hex[:8]}"
    late = replace(
        settings,
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=name,
        kafka_dlq_topic=name + ".dlq",
        kafka_partitions=2,
        kafka_replication=1,  # the session's single broker
        kafka_min_insync_replicas=1,
        spool_segment_max_age_ms=100,
    )
    sink = kafka_sink(late, metrics)
    sink.replayer.chunk_bytes = 256  # the ~1 KB segment goes in parts, each acked in turn
    await wait_for(lambda: "missing or leaderless" in caplog.text, 60, "a warning naming it")
    events = [orjson.dumps({"event_id": str(i)}) for i in range(50)]
    await sink.send(events)
    assert not sink.connected()
    await asyncio.sleep(0.15)
    await sink.flush()  # the buffer does this every flush interval: the segment closes

    await init_topics(late)
    await wait_for(sink.connected, 30, "the sink to see the topic")
    await wait_for(lambda: not any(late.spool_dir.iterdir()), 30, "replay to empty the spool")
    await sink.close()
    assert sorted(events_in(await read_topic(kafka_bootstrap, name))) == sorted(events)
    assert metric_value(metrics, "beacon_kafka_replayed_events_total") == 50


async def test_a_full_write_ahead_log_takes_events_as_soon_as_the_replay_frees_room(
    settings, metrics, kafka_bootstrap
):
    # Full, the log takes no event, so closes no segment and recounts only at the buffer's
    # flush interval (ten minutes here): the replay's deletions must reach it themselves.
    name = f"late.{uuid.uuid4().hex[:8]}"
    wal = dict(
        durability="wal", kafka_bootstrap=kafka_bootstrap, kafka_topic=name,
        kafka_dlq_topic=name + ".dlq", kafka_partitions=1, kafka_replication=1,
        kafka_min_insync_replicas=1, spool_max_bytes=SPOOL_MIN_BYTES, flush_interval_ms=600_000,
    )  # fmt: skip
    live = replace(settings, sink="kafka", **wal)
    events = [orjson.dumps({"event_id": str(i), "pad": "x" * 500}) for i in range(2100)]
    spool = SpoolSink(live.spool_dir, CollectorMetrics(CollectorRegistry()), **spool_limits(live))
    await spool.send(events)  # left by a run before: the spool's bound, all but a few events
    await spool.close()
    kept = spooled_events(live.spool_dir)
    client = TestClient(TestServer(create_app(live, kafka_sink(live, metrics), metrics)))
    await client.start_server()
    try:
        click = {"e": "click", "p": {"n": "1"}}
        assert (await client.post("/e", json=click)).status == 503  # the log is full

        await init_topics(live)  # the topic comes: the replay sends the spool and deletes it
        await wait_for(lambda: not set(kept) & set(spooled_events(live.spool_dir)), 60, "replay")
        deadline = time.monotonic() + 60
        while (await client.post("/e", json=click)).status != 204:
            assert time.monotonic() < deadline, "the log never took events again"
            await asyncio.sleep(0.05)
    finally:
        await client.close()


async def test_a_segment_that_cannot_be_read_holds_back_none_after_it(
    settings, metrics, kafka_bootstrap, kafka_topic, caplog
):
    live = replace(settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=kafka_topic)
    events = [orjson.dumps({"event_id": str(i)}) for i in range(50)]
    spool = SpoolSink(live.spool_dir, metrics, **spool_limits(live))
    await spool.send(events)
    await spool.close()
    # First by name, and open() refuses it (EISDIR), as a bad block or a wrong mode would.
    (live.spool_dir / "0000000000000-1--00000000.ndjson").mkdir()
    sink = kafka_sink(live, metrics)
    replayed = lambda: metric_value(metrics, "beacon_kafka_replayed_events_total")  # noqa: E731
    await wait_for(lambda: replayed() == len(events), 60, "the segment after it replayed")
    await sink.close()
    assert sorted(events_in(await read_topic(kafka_bootstrap, kafka_topic))) == sorted(events)
    assert "cannot read 0000000000000-1--00000000.ndjson to replay it" in caplog.text


async def test_replay_goes_on_from_its_last_ack_and_never_resends_a_segment_it_sent(
    settings, metrics, kafka_bootstrap, caplog, monkeypatch
):
    """A part refused part-way through a segment: the next pass sends from there, not the
    parts Kafka acknowledged again. A segment sent whole that cannot be deleted (a directory
    gone read-only): not sent again while its deletion is tried."""
    name = f"resume.{uuid.uuid4().hex[:8]}"
    late = replace(
        settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=name, kafka_dlq_topic=name + ".dlq",
        kafka_partitions=1, kafka_replication=1, kafka_min_insync_replicas=1,
        spool_segment_max_age_ms=100,
    )  # fmt: skip
    sink = kafka_sink(late, metrics)
    sink.replayer.chunk_bytes = 256  # the ~1 KB segment goes in parts, each acked in turn
    events = [orjson.dumps({"event_id": str(i)}) for i in range(50)]
    await sink.send(events)
    await asyncio.sleep(0.15)
    await sink.flush()  # the segment closes

    produce, calls = sink.link.produce, []

    async def third_refused(batch: list[bytes]):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        if len(calls) == 3:
            return [], batch  # as a full queue: nothing of it sent
        return await produce(batch)

    refusals = []

    def read_only(path) -> None:  # type: ignore[no-untyped-def]
        if len(refusals) < 3:
            refusals.append(path)
            raise PermissionError(13, "Permission denied")
        path.unlink()

    monkeypatch.setattr(sink.link, "produce", third_refused)
    monkeypatch.setattr("collector.spool.replay.delete", read_only)
    await init_topics(late)
    await wait_for(lambda: not any(late.spool_dir.iterdir()), 30, "replay to empty the spool")
    await sink.close()
    assert len(refusals) == 3 and "cannot delete it" in caplog.text
    assert sorted(events_in(await read_topic(kafka_bootstrap, name))) == sorted(events)
    assert metric_value(metrics, "beacon_kafka_replayed_events_total") == 50


def test_replay_reads_a_segment_in_parts_and_never_cuts_an_event(tmp_path) -> None:
    events = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 7)) for i in range(100)]
    torn = b'{"n":100,"pa'  # a crash cut the last write short: it is read as it is
    path = tmp_path / "segment"
    path.write_bytes(b"".join(e + b"\n" for e in events) + torn)
    parts, ends = [], []
    with open(path, "rb") as f:
        while (part := read_part(f, 50))[0]:
            parts.append(part[0])
            ends.extend(part[1])
    assert len(parts) > 10
    assert [e for part in parts for e in part] == [*events, torn]
    assert all(sum(map(len, part)) < 50 + 30 for part in parts)  # ~50 bytes, one event more
    # Each event's end: past its newline, the torn last one at the file's end.
    assert ends == [*accumulate(len(e) + 1 for e in events), path.stat().st_size]


def test_a_part_of_blank_lines_is_read_past_not_taken_for_the_end(tmp_path) -> None:
    # No writer makes blank lines, but a part of them only must not read as the segment's
    # end: the replay deletes a segment there, with the events after them.
    path = tmp_path / "segment"
    path.write_bytes(b'{"n":1}\n' + b"\n" * 200 + b'{"n":2}\n\n\n')
    events, ends = [], []
    with open(path, "rb") as f:
        while (part := read_part(f, 50))[0]:
            events.extend(part[0])
            ends.extend(part[1])
    assert events == [b'{"n":1}', b'{"n":2}']
    assert ends == [8, 8 + 200 + 8]


async def test_a_close_while_the_link_connects_ends_once_it_has(
    settings, metrics, kafka_bootstrap, kafka_topic
):
    # A stop that comes as the link reconnects (Kafka back, or taken for down after a late
    # ack): the connect ends, and so does close, not held until the process is killed.
    live = replace(settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=kafka_topic)
    sink = KafkaSink(live, metrics, SpoolSink(live.spool_dir, metrics, **spool_limits(live)))
    connect, connecting, go_on = sink.link._connect_once, asyncio.Event(), asyncio.Event()

    async def held_connect() -> None:
        connecting.set()
        await go_on.wait()
        await connect()

    sink.link._connect_once = held_connect  # type: ignore[method-assign]
    sink.start()
    await asyncio.wait_for(connecting.wait(), 30)
    closing = asyncio.create_task(sink.close())
    await wait_for(sink.link._stop.is_set, 30, "close to ask the link to stop")
    await asyncio.sleep(0.1)
    assert not closing.done()  # it waits for the connect
    go_on.set()
    await asyncio.wait_for(closing, 60)
    assert not sink.connected()


async def test_a_close_cuts_a_connect_that_waits_on_silent_brokers_in_turn(settings, metrics):
    # Brokers that take the connection and never answer: the client asks each in turn, each
    # for up to the timeout (60 s in all here), and close waited for all of them.
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # until the client goes
        writer.close()

    servers = [await asyncio.start_server(silent, "127.0.0.1", 0) for _ in range(60)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    live = replace(
        settings, kafka_bootstrap=",".join(f"127.0.0.1:{port}" for port in ports),
        kafka_timeout_ms=1000,
    )  # fmt: skip
    link = KafkaLink(live, metrics)
    link.start()
    try:
        await asyncio.wait_for(accepted.wait(), 30)
        await asyncio.wait_for(link.close(), 30)
        assert not link.up
    finally:
        for server in servers:
            server.close()


def on_topic(settings: Settings, bootstrap: str, topic: str, **more: Any) -> Settings:
    """`settings` producing to `topic`, with `more` settings."""
    return replace(settings, kafka_bootstrap=bootstrap, kafka_topic=topic, **more)


async def test_a_close_as_the_link_went_down_waits_for_it_and_sends_the_spool(
    settings, metrics, kafka_bootstrap, kafka_topic
):
    # The drain gave up at once with the link down, though it is back within a second: on a
    # pod's own volume the spool went with the pod. An ack timeout (the drain's time) of 30 s.
    live = on_topic(settings, kafka_bootstrap, kafka_topic, kafka_timeout_ms=30_000)
    sink = kafka_sink(live, metrics)
    await wait_for(sink.connected, 60, "the link up")
    sink.link.mark_down("an ack came late")  # as a broker failing over makes it
    events = [orjson.dumps({"event_id": str(i)}) for i in range(50)]
    await sink.send(events)  # to the spool: the link is down
    await sink.close()
    assert spooled_events(live.spool_dir) == []
    assert sorted(events_in(await read_topic(kafka_bootstrap, kafka_topic))) == sorted(events)


async def test_a_stop_ends_a_segments_replay_after_its_part_and_the_drain_sends_the_rest(
    settings, metrics, kafka_bootstrap, kafka_topic
):
    # A stop waited for the whole segment in replay (up to 16 MiB, an ack timeout a part), so
    # a shutdown could outlast its grace period before the drain began.
    # An ack timeout of a minute: the drain at close (as long as one) sends the rest in
    # parts acknowledged one by one, however loaded the broker.
    live = on_topic(settings, kafka_bootstrap, kafka_topic, kafka_timeout_ms=60_000)
    events = [orjson.dumps({"event_id": str(i)}) for i in range(2000)]
    spool = SpoolSink(live.spool_dir, metrics, **spool_limits(live))
    await spool.send(events)
    await spool.close()  # one closed segment, ~40 KB: ~150 parts of 256 bytes
    sink = KafkaSink(live, metrics, SpoolSink(live.spool_dir, metrics, **spool_limits(live)))
    sink.replayer.chunk_bytes = 256
    sink.start()
    replayed = lambda: metric_value(metrics, "beacon_kafka_replayed_events_total")  # noqa: E731
    await wait_for(lambda: replayed() > 0, 30, "the replay to begin")
    await sink.replayer.stop()
    assert 0 < replayed() < len(events)  # stopped within the segment
    assert spooled_events(live.spool_dir) == events  # kept whole until it is all sent
    await sink.close()  # the drain goes on from the part acknowledged
    assert replayed() == len(events)
    assert spooled_events(live.spool_dir) == []
    landed = events_in(await read_topic(kafka_bootstrap, kafka_topic))
    assert sorted(landed) == sorted(events)  # each once


async def test_events_queued_longer_than_the_timeout_go_to_the_spool_not_to_kafka(
    settings, metrics, kafka_bootstrap, kafka_topic
):
    # What a SIGKILL can lose is bounded by the time from an event's arrival to its ack or
    # spool, so the timeout counts from when the sink took the event, not from its send.
    timeout_ms = 100
    live = replace(settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=kafka_topic)
    sink = kafka_sink(live, metrics)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    # Short for the late events alone: the fresh event's ack and the spool sent at close
    # have the default time, which a loaded broker needs (a late ack marks the link down).
    sink.link.timeout_s = timeout_ms / 1000
    events = [orjson.dumps({"event_id": str(i)}) for i in range(20)]
    await sink.send(events)
    time.sleep(3 * timeout_ms / 1000)  # noqa: ASYNC251 - the loop held up: the pump runs late
    await wait_for(lambda: spilled(metrics, "timeout") == 20, 30, "the late events spooled")
    assert sink.connected()  # late is not down: the pump was held up, not Kafka
    sink.link.timeout_s = live.kafka_timeout_ms / 1000
    await sink.send(events[:1])  # a fresh event has its own time left
    await sink.close()

    assert spilled(metrics, "timeout") == 20
    assert spilled(metrics, "kafka_down") == 0
    # Spooled, then sent as the sink closed, Kafka being up: a spool on the pod's own volume
    # would go with the pod.
    assert metric_value(metrics, "beacon_kafka_replayed_events_total") == 20
    assert spooled_events(settings.spool_dir) == []
    # The fresh event and the replayed spool race to Kafka: either may land first.
    landed = events_in(await read_topic(kafka_bootstrap, kafka_topic))
    assert sorted(landed) == sorted(events[:1] + events)
    assert metric_value(metrics, "beacon_kafka_queue_bytes") == 0


async def test_a_partition_the_topic_no_longer_has_spools_the_batch_and_reconnects(
    settings, metrics, kafka_bootstrap, kafka_topic, caplog
):
    sink = kafka_sink(replace(settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=kafka_topic),
                      metrics)  # fmt: skip
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    # As if the topic had been made again with fewer partitions since the link looked: the
    # producer refuses the partition with an AssertionError, not a KafkaError.
    sink.link.partitions = [99]
    events = [orjson.dumps({"event_id": str(i)}) for i in range(10)]
    await sink.send(events)
    await wait_for(lambda: spilled(metrics, "kafka_down") == 10, 30, "the batch spooled")
    assert "Unrecognized partition" in caplog.text
    assert metric_value(metrics, "beacon_kafka_queue_bytes") == 0  # nothing held for good

    await wait_for(sink.connected, 30, "the link to come back with the topic's partitions")
    assert sink.link.partitions == [0, 1, 2]
    more = [orjson.dumps({"event_id": f"m{i}"}) for i in range(10)]
    await sink.send(more)
    await sink.close()  # the spooled batch goes too, Kafka being up
    assert spooled_events(settings.spool_dir) == []
    landed = events_in(await read_topic(kafka_bootstrap, kafka_topic))
    assert sorted(landed) == sorted(events + more)


async def test_partitions_added_to_the_topic_take_events_without_a_reconnect(
    settings, metrics, kafka_bootstrap, kafka_topic
):
    """Adding partitions is how a team makes room for more consumers (operations.md): the link
    sent to those it found at its connect for as long as Kafka stayed up, and the consumers
    that took the new partitions had nothing to read."""
    live = replace(settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=kafka_topic,
                   kafka_batch_max_bytes=1024)  # fmt: skip  # a batch of a few events
    sink = kafka_sink(live, metrics)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    producer = sink.link.producer
    assert producer is not None and sink.link.partitions == [0, 1, 2]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({kafka_topic: NewPartitions(total_count=5)})
    finally:
        await admin.close()
    deadline = time.monotonic() + 30
    while sink.link.partitions != [0, 1, 2, 3, 4]:  # until the new ones have their leader
        assert time.monotonic() < deadline, "timed out waiting for the new partitions"
        # What the producer's client does every metadata_max_age_ms (5 minutes) by itself.
        await producer.client.force_metadata_update()
        await asyncio.sleep(0.05)
    events = [orjson.dumps({"event_id": str(i), "pad": "x" * 200}) for i in range(100)]
    await sink.send(events)
    assert sink.link.producer is producer and sink.connected()  # no reconnect
    await sink.close()
    records = await read_topic(kafka_bootstrap, kafka_topic)
    assert {r.partition for r in records} == {0, 1, 2, 3, 4}
    assert sorted(events_in(records)) == sorted(events)


def spilled(metrics, reason: str) -> float:  # type: ignore[no-untyped-def]
    return metric_value(metrics, "beacon_kafka_spilled_events_total", reason=reason)


async def test_a_produce_that_raises_spools_its_events_and_frees_their_bytes(
    settings, metrics, kafka_bootstrap, kafka_topic, monkeypatch
):
    sink = kafka_sink(replace(settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=kafka_topic),
                      metrics)  # fmt: skip
    await wait_for(sink.connected, 30, "the sink to reach Kafka")

    async def broken(events, deadline_s):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in the link")

    monkeypatch.setattr(sink.link, "produce", broken)
    events = [orjson.dumps({"event_id": str(i)}) for i in range(10)]
    await sink.send(events)
    await wait_for(lambda: spilled(metrics, "timeout") == 10, 30, "the events spooled")
    assert metric_value(metrics, "beacon_kafka_queue_bytes") == 0  # nothing held for good
    await sink.close()
    assert spooled_events(settings.spool_dir) == events


async def test_a_producer_that_fails_every_send_is_replaced(
    settings, metrics, kafka_bootstrap, kafka_topic
):
    """aiokafka's sender task can die (its own bugs): the producer then fails every send while
    the broker's metadata still answers, so the link came up, went down at the first send, and
    again, at network speed, and nothing reached Kafka again, the spool filling behind it."""
    live = replace(settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=kafka_topic,
                   spool_segment_max_age_ms=100)  # fmt: skip
    sink = kafka_sink(live, metrics)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    broken = sink.link.producer
    assert broken is not None
    # What aiokafka does when its sender task ends with an error (Sender._fail_all).
    broken._message_accumulator.fail_all(KafkaError("the sender task died"))
    events = [orjson.dumps({"event_id": str(i)}) for i in range(10)]
    await sink.send(events)
    await wait_for(lambda: spilled(metrics, "kafka_down") == 10, 30, "the batch spooled")
    await wait_for(lambda: sink.link.producer not in (None, broken) and sink.connected(), 30,
                   "a new producer, up")  # fmt: skip
    more = [orjson.dumps({"event_id": f"m{i}"}) for i in range(10)]
    await sink.send(more)
    await asyncio.sleep(0.15)
    await sink.flush()  # the buffer does this every flush interval: the segment closes
    await wait_for(lambda: not any(live.spool_dir.iterdir()), 30, "replay to empty the spool")
    await sink.close()
    assert broken._sender._sender_task.done()  # the producer replaced was stopped to its end
    landed = events_in(await read_topic(kafka_bootstrap, kafka_topic))
    assert sorted(landed) == sorted(events + more)


async def small_topic(bootstrap: str) -> str:
    """A fresh one-partition topic that takes records of at most 8 KiB (max.message.bytes)."""
    name = f"small.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topic = NewTopic(name, 1, 1, topic_configs={"max.message.bytes": "8192"})
        await admin.create_topics([topic])
    finally:
        await admin.close()
    return name


async def test_batches_the_topic_refuses_as_too_large_go_again_smaller(
    settings, metrics, kafka_bootstrap
):
    """A topic whose max.message.bytes is below the batches (a topic set so, or batches sent
    uncompressed): each batch it refused went to the spool, came back from it at the same
    size and was refused again, the link marked down each time, until the spool was full."""
    name = await small_topic(kafka_bootstrap)
    live = replace(settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=name,
                   kafka_compression="none", kafka_batch_max_bytes=64 * 1024,
                   spool_segment_max_age_ms=100)  # fmt: skip
    sink = kafka_sink(live, metrics)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    events = [orjson.dumps({"event_id": f"{i:04d}", "pad": "x" * 250}) for i in range(200)]
    await sink.send(events)  # ~52 KB: one batch, refused
    await wait_for(lambda: spilled(metrics, "too_large") == 200, 30, "the batch spooled")
    await asyncio.sleep(0.15)
    await sink.flush()  # the buffer does this every flush interval: the segment closes
    await wait_for(lambda: not any(live.spool_dir.iterdir()), 60, "replay to empty the spool")
    assert sink.link.batch_max_bytes < 8192
    acked = metric_value(metrics, "beacon_kafka_events_total", outcome="acked")
    refused = metric_value(metrics, "beacon_kafka_events_total", outcome="too_large")
    more = [orjson.dumps({"event_id": f"m{i:03d}", "pad": "y" * 250}) for i in range(100)]
    await sink.send(more)  # at the bound learnt: taken at once
    await wait_for(lambda: metric_value(metrics, "beacon_kafka_events_total", outcome="acked")
                   == acked + 100, 30, "the later events acknowledged")  # fmt: skip
    assert metric_value(metrics, "beacon_kafka_events_total", outcome="too_large") == refused
    await sink.close()
    records = await read_topic(kafka_bootstrap, name)
    # Every event; those of a replay's part acked in a batch before another was refused are
    # sent again with it (at least once: the consumers drop repeats by event_id).
    assert set(events_in(records)) == set(events + more)
    assert spilled(metrics, "kafka_down") == spilled(metrics, "timeout") == 0  # the link stayed up
    assert metric_value(metrics, "beacon_kafka_events_total", outcome="failed") == 0


async def test_an_event_too_large_for_the_topic_alone_is_dropped_counted_and_the_rest_goes(
    settings, metrics, kafka_bootstrap
):
    """One event past the topic's max.message.bytes, refused even in a batch of its own: its
    segment's replay stopped at it on every pass, re-sending what it had sent of the part,
    and every segment behind it waited for good."""
    name = await small_topic(kafka_bootstrap)
    live = replace(settings, kafka_bootstrap=kafka_bootstrap, kafka_topic=name,
                   kafka_compression="none", spool_segment_max_age_ms=100)  # fmt: skip
    sink = kafka_sink(live, metrics)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    small = [orjson.dumps({"event_id": f"{i:03d}"}) for i in range(20)]
    huge = orjson.dumps({"event_id": "huge", "pad": "z" * 10_000})
    await sink.send([*small[:10], huge, *small[10:]])
    await wait_for(lambda: spilled(metrics, "too_large") > 0, 30, "the refused batch spooled")
    await asyncio.sleep(0.15)
    await sink.flush()  # the buffer does this every flush interval: the segment closes
    await wait_for(lambda: not any(live.spool_dir.iterdir()), 60, "its replay to end")
    later = [orjson.dumps({"event_id": f"l{i:03d}"}) for i in range(5)]
    await sink.spool.send(later)  # a segment behind it, as a later outage leaves one
    await asyncio.sleep(0.15)
    await sink.flush()  # the buffer does this every flush interval: the segment closes
    await wait_for(lambda: not any(live.spool_dir.iterdir()), 60, "replay to empty the spool")
    await sink.close()
    assert set(events_in(await read_topic(kafka_bootstrap, name))) == {*small, *later}
    dropped = metric_value(metrics, "beacon_events_dropped_total", reason="too_large")
    assert dropped == 1
