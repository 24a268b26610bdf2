"""The dead-letter topic: lines that cannot become rows, each alone in a record as it came,
with why and where from (a record of several lines loses only its bad ones)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer, ConsumerRecord

# Header names on a dead-lettered record: the reason, and where the record came from.
REASON = "beacon.reason"
SOURCE_TOPIC = "beacon.source.topic"
SOURCE_PARTITION = "beacon.source.partition"
SOURCE_OFFSET = "beacon.source.offset"
SOURCE_LINE = "beacon.source.line"  # the line's number in its record, from 0
TRUNCATED = "beacon.truncated"  # on a line cut to LINE_MAX_BYTES: its whole length in bytes
# On a dead letter without the source record's key and headers: their length in bytes.
SOURCE_OMITTED = "beacon.source.omitted"
# A longer line goes to the topic cut to this. A Kafka request holds 1 MiB by default (the
# producer's max_request_size, the broker's message.max.bytes), while a source record can hold
# more (a compressed batch, a topic allowed more): a record the dead-letter topic refuses would
# hold its batch back for good. The whole line stays in the source topic, where the headers
# point.
LINE_MAX_BYTES = 512 * 1024
# The source record's key and headers go along up to this much together (a producer's own are
# bytes to kilobytes); past it they are left out, their length said, or a record with a line
# at LINE_MAX_BYTES could pass what a request holds all the same.
SOURCE_META_MAX_BYTES = 64 * 1024
# A batch of dead letters: the producer has one request a partition in flight, so a batch of
# aiokafka's default 16 KiB made a batch whose every line is bad (a collector's release ahead
# of the consumers) an acknowledgement's round trip per ~30 lines. Half a request's 1 MiB:
# the broker's message.max.bytes bounds a batch with its framing.
BATCH_MAX_BYTES = 512 * 1024


def dead_letter(
    record: ConsumerRecord, line: int, value: bytes, reason: str
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The key, value and headers of a line's dead-letter record: the record's key; the line,
    cut to LINE_MAX_BYTES; the record's own headers, then ours."""
    # str(): a key read with bytes that were not UTF-8 replaced is a str subclass
    # (record_batch.Replaced), which the producer refuses.
    key, own = record.key, [(str(k), v) for k, v in record.headers]
    meta_bytes = len(key or b"") + sum(len(k.encode()) + len(v or b"") for k, v in own)
    # On the wire each header also takes its two lengths, a byte each at least: thousands of
    # empty headers are a megabyte there and nothing here.
    if meta_bytes + 2 * len(own) > SOURCE_META_MAX_BYTES:
        key, own = None, [(SOURCE_OMITTED, str(meta_bytes).encode())]
    headers = [
        *own,
        (REASON, reason.encode()),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
        (SOURCE_LINE, str(line).encode()),
    ]
    if len(value) > LINE_MAX_BYTES:
        headers.append((TRUNCATED, str(len(value)).encode()))
        value = value[:LINE_MAX_BYTES]
    return key, value, headers


class DeadLetters:
    """A producer for the DLQ topic; `send` returns once every record is acknowledged.

    acks="all": a batch's offsets are committed only after its rejects are durable, so a
    reject is in the DLQ or will be read again. A replayed batch sends its rejects again:
    the DLQ is at-least-once, and the source offset header tells repeats apart.
    Idempotence stays off: with it aiokafka hangs while the broker is down
    (https://github.com/aio-libs/aiokafka/issues/1101).
    """

    def __init__(self, bootstrap: str, topic: str, batch_max_bytes: int = BATCH_MAX_BYTES) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=False,
            client_id="beacon-consumer-dlq",
            max_batch_size=batch_max_bytes,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def send(self, rejects: Sequence[tuple[ConsumerRecord, int, bytes, str]]) -> None:
        """Produce every (record, line number, line, reason) and wait for all acknowledgements;
        raises KafkaError."""
        waits = []
        for record, line, value, reason in rejects:
            key, value, headers = dead_letter(record, line, value, reason)
            waits.append(
                await self._producer.send(self.topic, value=value, key=key, headers=headers)
            )
        await asyncio.gather(*waits)

    async def stop(self) -> None:
        await self._producer.stop()
