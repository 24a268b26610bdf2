"""Read closed spool segments in order, with a durable checkpoint.

The checkpoint holds the committed position (segment, byte offset) and, while an insert is
under way, the exact byte ranges of that batch. After a crash the pending ranges are read
again and inserted with the same dedup token, so ClickHouse drops the repeat: a crash re-reads
at most the batch in flight, and never doubles it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from contract.logs import Throttle
from contract.segments import closed_segments, fsync_dir, writing

log = logging.getLogger("beacon.consumer")


@dataclass(frozen=True, slots=True)
class Range:
    """Bytes [start, end) of one segment: whole lines only."""

    segment: str
    start: int
    end: int


def token_for(ranges: list[Range]) -> str:
    """The insert dedup token of a batch: the same ranges always give the same token, and
    other ranges another (segment names hold a random nonce, unique across hosts too)."""
    text = ";".join(f"{r.segment}:{r.start}:{r.end}" for r in ranges)
    return "spool-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def after_line(data: bytes, count: int) -> int:
    """The offset just past the `count`-th newline of `data`."""
    at = 0
    for _ in range(count):
        at = data.index(b"\n", at) + 1
    return at


class SpoolSource:
    """A cursor over closed segments; `commit` makes progress durable and frees space.

    A segment still on disk is unread or partly read: finished segments are deleted right
    after the checkpoint that says so. Nothing is skipped by name, so segments closed late
    by another writer process are still read.
    """

    def __init__(self, directory: Path, checkpoint_path: Path) -> None:
        self.directory = directory
        self.checkpoint_path = checkpoint_path
        directory.mkdir(parents=True, exist_ok=True)
        state = self._load()
        # Committed byte offset per segment not yet deleted (usually one entry, or none).
        self.offsets: dict[str, int] = dict(state.get("offsets", {}))
        self.pending: list[Range] = [Range(*r) for r in state.get("pending", [])]
        # The read cursor runs ahead of the committed offsets while a batch fills up.
        self._read: dict[str, int] = dict(self.offsets)
        self._unreadable = Throttle()  # a line a minute for a segment that cannot be read
        self._undeletable = Throttle()  # and for one read to its end that cannot be deleted
        self._undeleted: set[str] = set()  # such segments: read, not backlog
        for r in self.pending:
            self._read[r.segment] = r.end
        self._delete_finished()

    # -- reading ---------------------------------------------------------------------------

    def read(self, max_rows: int, max_bytes: int = 1 << 62) -> tuple[list[bytes], int, list[Range]]:
        """Up to `max_rows` lines after the read cursor, and up to `max_bytes` (cut at the line
        that reaches them; one line at least), as chunks of whole lines (joined by newlines, as
        the segments hold them: nothing split apart and joined again), their line count, and
        the ranges they came from."""
        chunks: list[bytes] = []
        ranges: list[Range] = []
        rows = size = 0
        for path in closed_segments(self.directory):
            name = path.name
            start = self._read.get(name, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read()
            except FileNotFoundError:  # deleted since the listing (by hand): as if not listed
                continue
            except OSError as exc:
                # One the disk does not give (EIO, EACCES): the segments after it go on, or it
                # would hold every one behind it for good; it is read again at the next read.
                if self._unreadable.passes(name) is not None:
                    log.warning("cannot read spool segment %s (%s); the segments after it go "
                                "on, and it is read again", name, exc)  # fmt: skip
                continue
            if data and not data.endswith(b"\n"):
                # A segment is closed by its rename before its bytes are synced: a machine
                # crash between the two can leave it cut in a line. That line is read as one of
                # its own (a torn one is rejected alone), not cut a byte shorter nor joined to
                # the next segment's first; its range ends one byte past the file.
                data += b"\n"
            count = data.count(b"\n")
            if not count:
                if not data and not start:  # empty (a writer's first write failed): done
                    path.unlink(missing_ok=True)
                continue
            end = len(data)
            if rows + count > max_rows:
                count = max_rows - rows
                end = after_line(data, count)
            if size + end > max_bytes:
                # To the end of the line that reaches the budget, as a Kafka batch takes the
                # record that reaches it.
                end = data.find(b"\n", max(0, max_bytes - size - 1)) + 1 or end
                count = data.count(b"\n", 0, end)
            chunks.append(data[: end - 1])
            rows += count
            size += end
            ranges.append(Range(name, start, start + end))
            self._read[name] = start + end
            if rows >= max_rows or size >= max_bytes:
                break
        return chunks, rows, ranges

    def read_ranges(self, ranges: list[Range]) -> tuple[list[bytes], list[Range]]:
        """Exactly these ranges, as chunks of lines (to replay a pending batch), and the ranges
        the replay settles. A segment gone (deleted by hand, or lost with a machine crash) is
        left out, its events with it: a consumer that stopped at it would stop for good, and
        the spool behind it fill. One the disk does not give (EIO, EACCES) is left to the reads
        after the replay, as `read` leaves it: its lines go in a later batch of their own (a
        copy of what the pending insert may have stored, which every reader counts once)."""
        chunks: list[bytes] = []
        settled: list[Range] = []
        for r in ranges:
            try:
                with open(self.directory / r.segment, "rb") as f:
                    f.seek(r.start)
                    chunks.append(f.read(r.end - r.start).removesuffix(b"\n"))
            except FileNotFoundError:
                log.warning("spool segment %s of the pending batch is gone: bytes %d-%d of it "
                            "are lost", r.segment, r.start, r.end)  # fmt: skip
            except OSError as exc:
                log.warning("cannot read spool segment %s of the pending batch (%s): bytes %d-%d "
                            "of it are read again after the replay", r.segment, exc, r.start,
                            r.end)  # fmt: skip
                self._read[r.segment] = r.start
                continue
            settled.append(r)
        return chunks, settled

    def writing(self) -> bool:
        """A collector has a segment open: more lines are on their way."""
        return writing(self.directory)

    def backlog_segments(self) -> int:
        """Closed segments not read to their end (one that cannot be deleted is read)."""
        return sum(p.name not in self._undeleted for p in closed_segments(self.directory))

    # -- progress --------------------------------------------------------------------------

    def begin(self, ranges: list[Range]) -> None:
        """Record the batch about to be inserted, before the insert."""
        self.pending = list(ranges)
        self._save()

    def commit(self, ranges: list[Range]) -> None:
        """The batch is in ClickHouse: move past it and delete finished segments."""
        for r in ranges:
            self.offsets[r.segment] = r.end
        self.pending = []
        self._save()
        self._delete_finished()

    def _delete_finished(self) -> None:
        deleted = False
        for name, offset in list(self.offsets.items()):
            path = self.directory / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = offset  # deleted after the last save: forget it too
            except OSError as exc:
                self._cannot_delete(name, exc)
                continue
            if size <= offset and not any(r.segment == name for r in self.pending):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    self._cannot_delete(name, exc)
                    continue
                self._undeleted.discard(name)
                del self.offsets[name]
                self._read.pop(name, None)
                deleted = True
        if deleted:
            # Durable before the next save forgets their offsets: a power loss could bring
            # a deleted segment back, and with no offset it would be read again whole.
            fsync_dir(self.directory)

    def _cannot_delete(self, name: str, exc: OSError) -> None:
        """A read segment that will not go (a volume gone read-only, an immutable file, EIO)
        keeps its offset: it is read past, and its deletion tried again at each commit. Raised,
        it stopped the consumer, and every start after it, with the spool behind it unread."""
        self._undeleted.add(name)
        if self._undeletable.passes(name) is not None:
            log.warning("cannot delete spool segment %s (%s), read to its end; tried again at "
                        "the next commit", name, exc)  # fmt: skip

    # -- the checkpoint file ---------------------------------------------------------------

    def _load(self) -> dict:
        try:
            return orjson.loads(self.checkpoint_path.read_bytes())
        except FileNotFoundError:
            return {}

    def _save(self) -> None:
        state = {
            "offsets": self.offsets,
            "pending": [[r.segment, r.start, r.end] for r in self.pending],
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint_path)  # atomic: the old or the new state, never half
        fsync_dir(self.checkpoint_path.parent)
