"""Batches of Kafka records: where a batch starts and ends, and why.

A batch takes the records of every partition this member owns that are due, so a consumer
makes about one insert an age (or a full batch) per table however many partitions it owns,
and holds about one batch's bytes buffered besides the one on its way. The insert dedup token
names the batch's offsets (`topic-partition-first-last-ms-ms` for one partition, a hash of every
partition's range for several), so a batch that may already be in ClickHouse must be formed
again from exactly the same ranges after a crash or a rebalance, or the repeat gets a new token.
The `ms` are the timestamps of the range's first and last records: offsets restart at 0 when a
topic is deleted and made again (which also drops its group's offsets), and a log that lost its
tail (the only replica's disk, an unclean leader election) gives its offsets to new records
after the ones it kept; without them such a range could name one stored before, starting with
the same record, and be dropped as its repeat, its new events lost. A record's timestamp never
changes, so a replay still reads the same token.

Fresh batches are cut by rows (`batch_max_rows`: lines, a record may hold several), by bytes
(`batch_max_bytes`) or by age (`batch_max_age_ms`, of the oldest record waiting), always at a
record's end. Not by age while records of an owned partition wait on the broker (up to
BACKLOG_AGES ages): a consumer catching up (after an outage, a restart, a rebalance) then
inserts in its largest batches, where the store pays least per row, and waits for nothing that
is not already there. A cut depends on how records arrived, so, as in ClickHouse Kafka
Connect's exactly-once design (per-partition state of the offset range in flight), the ranges
are written down before the insert, and the next reader of a partition replays them as they
were. The state rides in the Kafka offset commit itself: committed offset = the partition's
first offset in the batch, metadata = `beacon-inflight:<first>-<last>`, for a batch of
several partitions `:<batch hash>:<partitions>`, and for a partial replay `:p` (replayed again,
it stays partial: it never inserted under its token, so the token would stop no repeat of
what it stored). It needs no other store, is fenced by the
group generation like any commit, and is replaced by the plain commit of `last + 1` once
ClickHouse has acknowledged the insert.
https://github.com/ClickHouse/clickhouse-kafka-connect/blob/main/docs/DESIGN.md

A recorded batch whose ranges are all read here again is replayed under its token, and its
event ids are checked after the insert (consumers/ingest.py). One that cannot be formed again
(a rebalance gave its partitions to several members, retention deleted its records, a
partition ends before its last offset) is replayed from what this member has of it, and only
its events not already stored go in (`partial`). So is one whose ranges are not all read
through within BACKLOG_AGES ages of their partitions' adoption (a partition without a leader
is not fetched at all): what is read of it goes in, `partial`, and each range still unread
waits alone for its partition, then goes in `partial` too. Batches of the other partitions
are cut meanwhile as ever: a replay holds back only its own partitions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import NamedTuple

from aiokafka import ConsumerRecord, TopicPartition

from consumers.sources.protocol import Batch, join_lines, lines_of

TOKEN_TOPIC_MAX_CHARS = 100  # leaves room for partition, offsets and times in TOKEN_RE's 200
BATCH_HASH_CHARS = 32
INFLIGHT_RE = re.compile(
    rf"^beacon-inflight:(\d+)-(\d+)(?::([0-9a-f]{{{BATCH_HASH_CHARS}}}):(\d+))?(:p)?\Z"
)
# The longest a waiting backlog holds back an age cut, in batch ages: a high watermark that
# stopped moving (a partition not fetched for a while) cannot hold a batch for good. Also the
# longest a recorded batch waits for all of its ranges before what is read of it goes in.
BACKLOG_AGES = 10


class Inflight(NamedTuple):
    """A partition's range of a batch on its way, as its commit metadata records it."""

    first: int
    last: int
    batch: str = ""  # the batch's hash when it spans several partitions
    partitions: int = 1
    partial: bool = False  # a partial replay: stores only the events not stored yet


def inflight_metadata(
    first: int, last: int, batch: str = "", partitions: int = 1, partial: bool = False
) -> str:
    """The commit metadata that records a partition's range of a batch in flight."""
    tail = f":{batch}:{partitions}" if partitions > 1 else ""
    return f"beacon-inflight:{first}-{last}{tail}{':p' if partial else ''}"


def parse_inflight(metadata: str | None) -> Inflight | None:
    """What `inflight_metadata` recorded, else None."""
    match = INFLIGHT_RE.match(metadata or "")
    if match is None:
        return None
    first, last, batch, partitions, partial = match.groups()
    return Inflight(int(first), int(last), batch or "", int(partitions or 1), bool(partial))


def _topic_part(topic: str) -> str:
    # Topic names are [A-Za-z0-9._-]: the token needs no quoting (writers.TOKEN_RE), but
    # may be up to 249 characters: a long one is shortened to a hash of it.
    if len(topic) > TOKEN_TOPIC_MAX_CHARS:
        return hashlib.sha256(topic.encode()).hexdigest()[:32]
    return topic


def token_for(tp: TopicPartition, first: int, last: int, first_ms: int, last_ms: int) -> str:
    """The insert dedup token of records [first, last] of a partition, the first written at
    `first_ms` and the last at `last_ms` (the log they are of: see the module's docstring)."""
    return f"{_topic_part(tp.topic)}-{tp.partition}-{first}-{last}-{first_ms}-{last_ms}"


def batch_hash(ranges: Iterable[tuple[TopicPartition, int, int, int, int]]) -> str:
    """Names the ranges of a batch of several partitions (with the timestamps of each one's
    first and last records), whatever their order."""
    text = ",".join(
        f"{tp.topic}:{tp.partition}:{a}-{b}:{first_ms}-{last_ms}"
        for tp, a, b, first_ms, last_ms in sorted(ranges)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:BATCH_HASH_CHARS]


def _span(
    tp: TopicPartition, records: list[ConsumerRecord]
) -> tuple[TopicPartition, int, int, int, int]:
    """What a token names of a partition's records: offsets and times of the first and last."""
    first, last = records[0], records[-1]
    return tp, first.offset, last.offset, first.timestamp, last.timestamp


class Member(NamedTuple):
    """A partition's records in a batch, and their lines."""

    tp: TopicPartition
    records: list[ConsumerRecord]
    lines: int


class KafkaBatch(Batch):
    """Records [first, last] of one or more partitions, under the token that names them. A
    record holds one event or an NDJSON chunk of several (docs/tracking.md "Event format"):
    the batch's lines are theirs in order, partition after partition."""

    def __init__(
        self,
        members: list[Member],
        replay: bool = False,
        partial: bool = False,
    ):
        self.members = members
        spans = [_span(m.tp, m.records) for m in members]
        # (first, last) offset of each partition's records.
        self.ranges = {tp: (first, last) for tp, first, last, _, _ in spans}
        self.hash = batch_hash(spans) if len(members) > 1 else ""
        if self.hash:
            token = f"{_topic_part(members[0].tp.topic)}-b-{self.hash}"
        else:
            token = token_for(*spans[0])
        values = [r.value for _, records, _ in members for r in records]
        super().__init__(join_lines(values), token, replay, partial)
        self.segments = [m.lines for m in members]

    @property
    def tps(self) -> list[TopicPartition]:
        return [m.tp for m in self.members]

    def inflight(self) -> dict[TopicPartition, str]:
        """The commit metadata of each partition while the batch is on its way."""
        n = len(self.members)
        return {
            tp: inflight_metadata(a, b, self.hash, n, self.partial)
            for tp, (a, b) in self.ranges.items()
        }

    def rejected_lines(self) -> list[tuple[ConsumerRecord, int, bytes, str]]:
        """(record, line number in the record, the line, reason) of every reject."""
        wanted = dict(self.rejects)
        out = []
        number = 0  # of the batch's line
        for _, records, _ in self.members:
            for record in records:
                lines = lines_of(record.value).split(b"\n")
                for at, line in enumerate(lines):
                    if number + at in wanted:
                        out.append((record, at, line, wanted[number + at]))
                number += len(lines)
        return out

    @property
    def label(self) -> str:
        return ", ".join(f"{tp} {a}-{b}" for tp, (a, b) in self.ranges.items())


class PartitionBuffer:
    """Records read from one partition and not yet in a batch."""

    def __init__(
        self,
        tp: TopicPartition,
        committed: int,
        inflight: Inflight | None,
        adopted_at: float = 0.0,
    ):
        self.tp = tp
        self.committed = committed  # the next offset to store: lag is counted from here
        self.inflight = inflight  # a range to replay exactly, from the commit metadata
        self.adopted_at = adopted_at  # monotonic time this member took the partition
        self.records: list[ConsumerRecord] = []
        self.sizes: list[tuple[int, int]] = []  # (lines, bytes) of each buffered record
        self.rows = self.bytes = 0  # their sums
        self.first_read_at = 0.0  # monotonic time the oldest buffered record was read
        self.next_offset = committed  # after the last record read

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

    def read_through(self) -> bool:
        """The recorded range is all buffered (never while none is recorded)."""
        if self.inflight is None or not self.records:
            return False
        return self.records[-1].offset >= self.inflight.last

    def behind(self, highwater: int | None) -> bool:
        """Records of the partition wait on the broker."""
        return highwater is not None and highwater > self.next_offset

    def take(self, count: int, now: float) -> Member:
        """The first `count` records, out of the buffer."""
        taken, self.records = self.records[:count], self.records[count:]
        sizes, self.sizes = self.sizes[:count], self.sizes[count:]
        lines = sum(lines for lines, _ in sizes)
        self.rows -= lines
        self.bytes -= sum(length for _, length in sizes)
        # The rest waits its own age from now: it was not due on its own.
        self.first_read_at = now
        return Member(self.tp, taken, lines)


def cut(
    parts: list[PartitionBuffer],
    highwaters: dict[TopicPartition, int | None],
    now: float,
    limits: tuple[int, int, float],
    final: bool,
    quiet: bool = False,
) -> KafkaBatch | None:
    """The next batch, if one is due. `limits`: (max rows, max bytes, max age in seconds).

    Recorded ranges go first, each batch as it was, once read through; meanwhile the other
    partitions' records are cut as ever. `final` (shutting down) cuts a fresh batch whatever its
    age, but never a replay not read through: the next reader replays it in full. `quiet` (the
    feed fetched nothing for a poll interval) cuts it before its age once every partition is
    read to its high watermark: the end of a burst is stored at once.
    """
    max_rows, max_bytes, max_age_s = limits
    replaying = [p for p in parts if p.inflight is not None]
    if replaying:
        replay = _cut_replay(replaying, highwaters, now, max_age_s * BACKLOG_AGES)
        if replay is not None:
            return replay
        parts = [p for p in parts if p.inflight is None]
    waiting = [p for p in parts if p.records]
    if not waiting:
        return None
    reason = _due(parts, waiting, highwaters, now, limits, final, quiet)
    if not reason:
        return None
    # The longest waiting first, up to the limits, at a record's end.
    members = []
    rows = size = 0
    for part in sorted(waiting, key=lambda p: (p.first_read_at, p.tp)):
        count = 0
        for lines, length in part.sizes:
            if rows >= max_rows or size >= max_bytes:
                break
            count += 1
            rows += lines
            size += length
        if count:
            members.append(part.take(count, now))
    batch = KafkaBatch(members)
    batch.cut_by = reason
    return batch


def _due(
    parts: list[PartitionBuffer],
    waiting: list[PartitionBuffer],
    highwaters: dict[TopicPartition, int | None],
    now: float,
    limits: tuple[int, int, float],
    final: bool,
    quiet: bool,
) -> str:
    """Why a fresh batch is due now (consumers/metrics.py CUT_REASONS), or '' while it is not."""
    max_rows, max_bytes, max_age_s = limits
    if sum(p.rows for p in waiting) >= max_rows:
        return "rows"
    if sum(p.bytes for p in waiting) >= max_bytes:
        return "bytes"
    if final:
        return "final"
    age_s = now - min(p.first_read_at for p in waiting)
    behind = any(p.behind(highwaters.get(p.tp)) for p in parts)
    if quiet and not behind:
        return "quiet"
    if age_s < max_age_s or (behind and age_s < max_age_s * BACKLOG_AGES):
        return ""
    return "age"


def _cut_replay(
    parts: list[PartitionBuffer],
    highwaters: dict[TopicPartition, int | None],
    now: float,
    wait_s: float,
) -> KafkaBatch | None:
    """A recorded batch, once every range of it this member owns is read through (or its
    partition has nothing more): under its token when all of it is here, else `partial`. One
    still incomplete `wait_s` after its partitions were adopted goes in without the ranges not
    read through (`partial`, cut by `replay_split`); those wait on, each alone."""
    groups: dict[str, list[PartitionBuffer]] = {}
    for part in parts:
        assert part.inflight is not None
        key = part.inflight.batch or str(part.tp)
        groups.setdefault(key, []).append(part)
    for group in groups.values():
        complete = [p for p in group if p.read_through() or _caught_up(p, highwaters)]
        split = False
        if len(complete) < len(group):
            if not complete or now - max(p.adopted_at for p in group) < wait_s:
                continue  # keep reading: a range is not complete yet
            split = True  # a range is not read (its partition has no leader): the rest goes in
        members = []
        recorded = group[0].inflight
        assert recorded is not None
        exact = len(group) == recorded.partitions and not split and not recorded.partial
        for part in complete:
            inflight = part.inflight
            assert inflight is not None
            part.inflight = None
            count = sum(1 for r in part.records if r.offset <= inflight.last)
            if not count:
                exact = False  # nothing of the range is left
                continue
            member = part.take(count, now)
            exact = exact and (member.records[0].offset, member.records[-1].offset) == inflight[:2]
            members.append(member)
        if members:
            batch = KafkaBatch(members, replay=True, partial=not exact)
            if split:
                batch.cut_by = "replay_split"
            return batch
    return None


def _caught_up(part: PartitionBuffer, highwaters: dict[TopicPartition, int | None]) -> bool:
    """The partition has no record left to read (its recorded range ends past it)."""
    highwater = highwaters.get(part.tp)
    return highwater is not None and part.next_offset >= highwater
