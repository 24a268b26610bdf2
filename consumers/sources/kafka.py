"""Read the events topic in a consumer group, committing offsets by hand.

A thin layer over aiokafka: the pipeline decides what to commit and when; this module keeps
the group mechanics (listener, pause, commit metadata, offsets for lag) in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    CoordinatorLoadInProgressError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    for_code,
)

from consumers.settings import ConsumerSettings
from consumers.sources import aiokafka_compat
from consumers.sources.kafka_batches import Inflight, parse_inflight
from contract import common

log = logging.getLogger("beacon.consumer")

Partitions = set[TopicPartition]
Offsets = dict[TopicPartition, tuple[int, str]]  # (offset, metadata) to commit

# The dead-letter topic when the consumer has to create it: rejects are rare, but kept as
# safely as events, as `beacon kafka init` would make it (3 replicas where the cluster has
# them, an acks=all write on 2, kept 14 days).
DLQ_PARTITIONS = 1
DLQ_REPLICATION = 3
DLQ_MIN_INSYNC_REPLICAS = 2
COMMIT_TIMEOUT_S = 30.0


class Listener(ConsumerRebalanceListener):
    """Hands rebalance events to the pipeline; aiokafka waits for these before going on."""

    def __init__(
        self,
        revoked: Callable[[Partitions], Awaitable[None]],
        assigned: Callable[[Partitions], None],
    ) -> None:
        self._revoked = revoked
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._assigned(set(assigned))


class KafkaSource:
    """One group member on `settings.kafka_topic`, auto-commit off, from the earliest record."""

    def __init__(self, settings: ConsumerSettings, **consumer_options: Any) -> None:
        """`consumer_options` go to AIOKafkaConsumer as they are (tests shorten timeouts)."""
        self.topic = settings.kafka_topic
        self.group = settings.kafka_group
        self.bootstrap = settings.kafka_bootstrap
        # A record whose header key is not UTF-8 (another producer's) is read as Kafka's own
        # clients read it, not raised on at every fetch of its partition for good.
        aiokafka_compat.install()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.kafka_group,
            client_id="beacon-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Heartbeats run in the background; a member also leaves the group when getmany()
            # is not called for max_poll_interval_ms (aiokafka's default, 5 minutes). The
            # pipeline polls at least every poll_interval_ms plus one insert attempt, and never
            # sleeps on a retry: it pauses the partition and keeps polling (with its buffers
            # full, for nothing: keep_alive).
            **{
                # Another producer's transactions (Kafka Connect, Flink, MirrorMaker): an
                # aborted one's records are not events, and an open one's not yet; as Kafka's
                # own clients and ClickHouse's Kafka engine read them. The ends read are then
                # the last stable offsets: an open transaction is not records waiting.
                "isolation_level": "read_committed",
                # aiokafka holds one fetch a partition until it is taken: this times the
                # partitions owned is what waits outside the batch bound.
                "max_partition_fetch_bytes": settings.kafka_partition_fetch_bytes,
                "session_timeout_ms": settings.kafka_session_timeout_ms,
                # Three heartbeats a session, as Kafka's own defaults (3 s of 10 s).
                "heartbeat_interval_ms": max(100, settings.kafka_session_timeout_ms // 3),
                **consumer_options,
            },
        )
        self.admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap, client_id="beacon-consumer-admin"
        )
        self._commits: set[asyncio.Task[None]] = set()  # under way; a revocation ends them

    async def start(
        self,
        revoked: Callable[[Partitions], Awaitable[None]],
        assigned: Callable[[Partitions], None],
    ) -> None:
        async def fenced_then_revoked(tps: Partitions) -> None:
            self._end_commits()
            await revoked(tps)
            # And the commit of a batch whose insert the revocation waited for, started
            # before the pipeline learnt its partitions were no longer its own.
            self._end_commits()

        await self.admin.start()
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=Listener(fenced_then_revoked, assigned))

    async def ensure_topic(self, name: str) -> None:
        """Create `name` when missing (brokers here do not auto-create topics)."""
        if name in await self.admin.list_topics():
            return
        brokers = len((await self.admin.describe_cluster())["brokers"])
        replication = min(DLQ_REPLICATION, brokers)
        configs = {
            "min.insync.replicas": str(min(DLQ_MIN_INSYNC_REPLICAS, replication)),
            "retention.ms": str(common.DLQ_RETENTION_MS),
        }
        topic = NewTopic(name, DLQ_PARTITIONS, replication, topic_configs=configs)
        # The broker answers each topic with an error code; aiokafka raises none of them.
        response = await self.admin.create_topics([topic])
        for _, code, *message in response.topic_errors:
            if code == TopicAlreadyExistsError.errno:
                continue  # another consumer was first
            if code:
                # A refusal (a permission, a policy, a name) would otherwise be found by the
                # first bad line, whose batch then failed for good.
                error = for_code(code)
                text = message[0] if message and message[0] else error.description
                raise error(f"cannot create the dead-letter topic {name}: {text}")
            log.info("created topic %s", name)

    async def poll(
        self, timeout_ms: int, max_records: int, only: Iterable[TopicPartition] = ()
    ) -> dict[TopicPartition, list]:
        """Records fetched; from the partitions `only` names when it names any (the others'
        stay fetched, one fetch each, for a later poll)."""
        records: dict[TopicPartition, list[ConsumerRecord]] = await self.consumer.getmany(
            *only, timeout_ms=timeout_ms, max_records=max_records
        )
        return records

    async def keep_alive(self) -> None:
        """Call getmany() for records of no partition (none is numbered -1): a member that
        calls it for none of max_poll_interval_ms is taken for stuck and leaves its group.
        Raises the coordination errors a poll would."""
        await self.consumer.getmany(TopicPartition(self.topic, -1), timeout_ms=0)

    async def committed(
        self, tps: Iterable[TopicPartition]
    ) -> dict[TopicPartition, tuple[int | None, Inflight | None]]:
        """(committed offset or None, in-flight range or None) per partition.

        Through the admin client: the consumer's committed() drops the commit metadata.
        """
        tps = list(tps)
        got = await self.admin.list_consumer_group_offsets(self.group, partitions=tps)
        if missing := [tp for tp in tps if tp not in got]:
            # The broker answers for every partition named (offset -1: never committed). None
            # at all is a group-level error (the coordinator moving or loading the group),
            # which aiokafka does not raise: read as "never committed", the partitions would
            # be read again from their start and stored twice.
            raise CoordinatorLoadInProgressError(f"no committed offsets given for {missing}")
        out: dict[TopicPartition, tuple[int | None, Inflight | None]] = {}
        for tp in tps:
            meta = got.get(tp)
            if meta is None or meta.offset < 0:
                out[tp] = (None, None)
            else:
                out[tp] = (meta.offset, parse_inflight(meta.metadata))
        return out

    async def beginning(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = await self.consumer.beginning_offsets(list(tps))
        return offsets

    async def position(self, tp: TopicPartition) -> int:
        """The offset the client hands over next from `tp`. Past records the broker no longer
        had when it came to fetch them (it starts again from the log's start:
        auto_offset_reset); waits while it looks that start up."""
        offset: int = await self.consumer.position(tp)
        return offset

    async def end(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = await self.consumer.end_offsets(list(tps))
        return offsets

    async def commit(self, offsets: Offsets) -> None:
        """Commit (offset, metadata) per partition; raises KafkaError (also when fenced, or
        when the group rebalanced while it was tried)."""
        # aiokafka retries a commit while the coordinator is unreachable, without end: bound
        # it, so the loop gets back to polling and retries the step with its own backoff.
        # And it builds each try with the member's generation of the moment: a try after a
        # rebalance would commit these offsets for partitions that may be another member's
        # now (the broker checks the generation, not who owns a partition), moving their
        # offset back or wiping that member's in-flight range. So a revocation, which comes
        # before the member joins again, ends every commit under way (_end_commits); a
        # request already sent carries the old generation and is answered as it is.
        task = asyncio.ensure_future(self.consumer.commit(offsets))
        self._commits.add(task)
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                await task
        except TimeoutError:
            raise KafkaTimeoutError(f"offset commit took over {COMMIT_TIMEOUT_S}s") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this caller is being cancelled, not the commit by a revocation
            raise CommitFailedError("the group rebalanced while the commit was tried") from None
        finally:
            task.cancel()  # after a timeout, or this caller cancelled: no try goes on alone
            self._commits.discard(task)

    def _end_commits(self) -> None:
        for task in self._commits:
            task.cancel()

    def rewind(self, tp: TopicPartition, offset: int) -> None:
        """Fetch `tp` again from `offset` (records that arrived before we could take them)."""
        if tp in self.consumer.assignment():
            self.consumer.seek(tp, offset)

    def highwater(self, tp: TopicPartition) -> int | None:
        """How far the last fetch of `tp` said it may be read: its last stable offset (the
        highwater, but for a transaction still open). None before a fetch."""
        if tp not in self.consumer.assignment():
            return None  # revoked meanwhile
        stable: int | None = self.consumer.last_stable_offset(tp)
        if stable is None or stable < 0:  # a broker before 0.11 has none
            highwater: int | None = self.consumer.highwater(tp)
            return highwater
        return stable

    def log_end(self, tp: TopicPartition) -> int | None:
        """The highwater of the last fetch of `tp`: past its last stable offset, the records
        of a transaction still open, and every record after them, wait for its end."""
        if tp not in self.consumer.assignment():
            return None
        highwater: int | None = self.consumer.highwater(tp)
        return highwater

    def assignment(self) -> Partitions:
        return set(self.consumer.assignment())

    def paused(self) -> Partitions:
        return set(self.consumer.paused())

    def pause(self, *tps: TopicPartition) -> None:
        # A partition revoked meanwhile is not ours to pause: skip it, not the others.
        mine = self.assignment()
        self.consumer.pause(*(tp for tp in tps if tp in mine))

    def resume(self, *tps: TopicPartition) -> None:
        mine = self.assignment()
        self.consumer.resume(*(tp for tp in tps if tp in mine))

    async def stop(self) -> None:
        """Leave the group (its partitions go to the others at once) and close."""
        try:
            await self.consumer.stop()
        finally:
            await self.admin.close()
