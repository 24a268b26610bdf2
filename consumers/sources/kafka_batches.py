"""Per-partition batches of Kafka records: where a batch starts and ends, and why.

The insert dedup token names the batch's offsets (`topic-partition-first-last`), so a batch
that may already be in ClickHouse must be formed again from exactly the same offsets after a
crash or a rebalance, or the repeat gets a new token and is stored twice.

Fresh batches are cut by rows (`batch_max_rows`: lines, a record may hold several), by bytes
(`batch_max_bytes`) or by age (`batch_max_age_ms`), always at a record's end. Not by age while
records of the partition wait on the broker (up to BACKLOG_AGES ages): a consumer catching up
(after an outage, a restart, a rebalance) then inserts in its largest batches, where the store
pays least per row, and waits for nothing that is not already there. A row or byte cut
is reproducible from the committed offset; an age cut is not: it depends on how fast records
arrived. So, as in ClickHouse Kafka Connect's exactly-once design (per-partition state of the
offset range in flight), the range is written down before the insert, and the next reader of
the partition replays it as it was. The state rides in the Kafka offset commit itself:
committed offset = the batch's first offset, metadata = `beacon-inflight:<first>-<last>`. It
needs no other store, is fenced by the group generation like any commit, and is replaced by
the plain commit of `last + 1` once ClickHouse has acknowledged the insert.
https://github.com/ClickHouse/clickhouse-kafka-connect/blob/main/docs/DESIGN.md

A recorded range that cannot be formed again (its records were deleted by retention, or the
partition ends before its last offset) is cut at what exists: the token differs, and the
event_id backstop (ReplacingMergeTree on event_id, reports read with FINAL) takes the repeat.
"""

from __future__ import annotations

import hashlib
import re

from aiokafka import ConsumerRecord, TopicPartition

from consumers.sources.protocol import Batch, join_lines, lines_of

TOKEN_TOPIC_MAX_CHARS = 120  # leaves room for partition and offsets in TOKEN_RE's 200
INFLIGHT_RE = re.compile(r"^beacon-inflight:(\d+)-(\d+)$")
# The longest a waiting backlog holds back an age cut, in batch ages: a high watermark that
# stopped moving (a partition not fetched for a while) cannot hold a batch for good.
BACKLOG_AGES = 10


def inflight_metadata(first: int, last: int) -> str:
    """The commit metadata that records a batch in flight."""
    return f"beacon-inflight:{first}-{last}"


def parse_inflight(metadata: str | None) -> tuple[int, int] | None:
    """(first, last) from commit metadata written by `inflight_metadata`, else None."""
    match = INFLIGHT_RE.match(metadata or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


class PartitionBatch(Batch):
    """Records [first, last] of one partition, under the token that names them. A record holds
    one event or an NDJSON chunk of several (docs/tracking.md "Event format"): the batch's lines
    are theirs in order."""

    def __init__(self, tp: TopicPartition, records: list[ConsumerRecord], replay: bool = False):
        self.tp = tp
        self.records = records
        token = token_for(tp, records[0].offset, records[-1].offset)
        super().__init__(join_lines([r.value for r in records]), token, replay)

    def rejected_lines(self) -> list[tuple[ConsumerRecord, int, bytes, str]]:
        """(record, line number in the record, the line, reason) of every reject."""
        wanted = dict(self.rejects)
        out = []
        number = 0  # of the batch's line
        for record in self.records:
            lines = lines_of(record.value).split(b"\n")
            for at, line in enumerate(lines):
                if number + at in wanted:
                    out.append((record, at, line, wanted[number + at]))
            number += len(lines)
        return out

    @property
    def first(self) -> int:
        return self.records[0].offset

    @property
    def last(self) -> int:
        return self.records[-1].offset

    @property
    def label(self) -> str:
        return f"{self.tp} {self.first}-{self.last}"


def token_for(tp: TopicPartition, first: int, last: int) -> str:
    """The insert dedup token of records [first, last] of a partition."""
    # Topic names are [A-Za-z0-9._-]: the token needs no quoting (writers.TOKEN_RE), but
    # may be up to 249 characters: a long one is shortened to a hash of it.
    topic = tp.topic
    if len(topic) > TOKEN_TOPIC_MAX_CHARS:
        topic = hashlib.sha256(topic.encode()).hexdigest()[:32]
    return f"{topic}-{tp.partition}-{first}-{last}"


class PartitionBuffer:
    """Records read from one partition and not yet committed; at most one batch in flight."""

    def __init__(self, tp: TopicPartition, committed: int, inflight: tuple[int, int] | None):
        self.tp = tp
        self.committed = committed  # the next offset to store: lag is counted from here
        self.inflight = inflight  # a range to replay exactly, from the commit metadata
        self.records: list[ConsumerRecord] = []
        self.sizes: list[tuple[int, int]] = []  # (lines, bytes) of each buffered record
        self.rows = self.bytes = 0  # their sums
        self.first_read_at = 0.0  # monotonic time the oldest buffered record was read
        self.next_offset = committed  # after the last record read
        self.batch: PartitionBatch | None = None

    @property
    def flight(self) -> PartitionBatch:
        """The batch on its way (for callers that know there is one)."""
        assert self.batch is not None
        return self.batch

    def add(self, records: list[ConsumerRecord], now: float) -> None:
        if not records:
            return
        if not self.records:
            self.first_read_at = now
        self.records.extend(records)
        for record in records:
            value = lines_of(record.value)
            lines = value.count(b"\n") + 1
            self.sizes.append((lines, len(value)))
            self.rows += lines
            self.bytes += len(value)
        self.next_offset = records[-1].offset + 1

    def cut(
        self,
        now: float,
        max_rows: int,
        max_bytes: int,
        max_age_s: float,
        highwater: int | None,
        final: bool,
    ) -> PartitionBatch | None:
        """Start the next batch when one is due; None while one is in flight or none is due.

        `final` (shutting down) cuts a fresh batch whatever its age, but never a partial replay:
        the next reader replays that range in full.
        """
        if self.batch is not None:
            return None
        if self.inflight is not None:
            batch = self._cut_replay(highwater, now)
            if batch is not None or self.inflight is not None:
                return batch
        if not self.records:
            return None
        full = self._full(max_rows, max_bytes)
        if full is None and not final:
            age_s = now - self.first_read_at
            behind = highwater is not None and highwater > self.next_offset
            if age_s < max_age_s or (behind and age_s < max_age_s * BACKLOG_AGES):
                return None
        return self._take(full or len(self.records), replay=False, now=now)

    def _full(self, max_rows: int, max_bytes: int) -> int | None:
        """Records in the first batch that reaches `max_rows` lines or `max_bytes`, if any."""
        if self.rows < max_rows and self.bytes < max_bytes:
            return None
        rows = size = 0
        for count, (lines, length) in enumerate(self.sizes, 1):
            rows += lines
            size += length
            if rows >= max_rows or size >= max_bytes:
                return count
        return None

    def _cut_replay(self, highwater: int | None, now: float) -> PartitionBatch | None:
        assert self.inflight is not None
        last = self.inflight[1]
        caught_up = highwater is not None and self.next_offset >= highwater
        read_through = bool(self.records) and self.records[-1].offset >= last
        if not (read_through or caught_up):
            return None  # keep reading: the range is not complete yet
        self.inflight = None
        count = sum(1 for r in self.records if r.offset <= last)
        if count == 0:
            return None  # nothing of the range exists any more: cut fresh batches
        # Read through: the same records as before, the same token. Cut short (the partition
        # ends early): a batch of its own, with its own in-flight mark.
        return self._take(count, replay=read_through, now=now)

    def _take(self, count: int, replay: bool, now: float) -> PartitionBatch:
        self.batch = PartitionBatch(self.tp, self.records[:count], replay=replay)
        self.records = self.records[count:]
        taken, self.sizes = self.sizes[:count], self.sizes[count:]
        self.rows -= sum(lines for lines, _ in taken)
        self.bytes -= sum(length for _, length in taken)
        # The rest waits its own age from now: it was not due on its own.
        self.first_read_at = now
        return self.batch

    def done(self) -> None:
        """The batch is stored and its offsets committed."""
        assert self.batch is not None
        self.committed = self.batch.last + 1
        self.batch = None
