"""The spool sink: events appended to local segment files, rotated by size, age and a pause in
the traffic, bounded in bytes (the segment format: collector/spool/).

Readers only ever see closed segments. A write that stops short (a full disk, a file past
RLIMIT_FSIZE) is cut back to its last whole line at once, and only the events whose whole line
is in the segment count as spooled; the rest are counted as lost (`spool_error`). A segment at
the file size limit is closed, and the rest of the write goes into a new one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Unpack

from collector.metrics import CollectorMetrics
from collector.spool.segments import ShortWrite
from collector.spool.writer import Limits, SegmentWriter


class SpoolSink:
    """Sink that appends events to local segment files; all file work runs in a thread, one
    call at a time (the segments are not thread-safe, and the buffer flushes while it sends)."""

    def __init__(
        self, directory: Path, metrics: CollectorMetrics, **limits: Unpack[Limits]
    ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.segments = SegmentWriter(directory, metrics, label="spool", tag="", **limits)
        self._closed = False
        self._lock = asyncio.Lock()

    # -- the protocol --------------------------------------------------------------------

    async def send(self, events: list[bytes]) -> None:
        await self.keep(events)

    async def keep(self, events: list[bytes]) -> int:
        """`send`, and how many of the events are in a segment now (the first ones); the
        rest are counted lost (`spool_full`, `spool_error`)."""
        async with self._lock:  # the room too: it is what the calls before left
            if self._closed:
                raise RuntimeError("send after close")
            return await self._keep(events)

    async def _keep(self, events: list[bytes]) -> int:
        room = self.segments.max_bytes - self.segments.used_bytes
        fits = 0
        size = 0
        for raw in events:  # whole events only: keep the ones that fit, count the rest
            if size + len(raw) + 1 > room:
                break
            size += len(raw) + 1
            fits += 1
        if fits < len(events):
            self.metrics.events_dropped.labels("spool_full").inc(len(events) - fits)
        if fits:
            data = b"\n".join(events[:fits]) + b"\n"
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                # Spooled: the events whose whole line is in the segment; the rest are lost.
                kept = exc.lines if isinstance(exc, ShortWrite) else 0
                if kept:
                    self.metrics.sink_events.labels("spooled").inc(kept)
                self.metrics.events_dropped.labels("spool_error").inc(fits - kept)
                return kept
            self.metrics.sink_events.labels("spooled").inc(fits)
        return fits

    async def flush(self) -> None:
        async with self._lock:
            try:
                await asyncio.to_thread(self._flush, False)
            except OSError as exc:
                self.segments.failed(exc)
            else:
                # After an error no event may come while readiness fails: the rescan finds
                # out whether the disk takes a write again, not only after the next success.
                await self.segments.rescan()

    def healthy(self) -> bool:
        segments = self.segments
        return not self._closed and segments.error is None and not segments.near_full()

    async def close(self) -> None:
        """Close the open segment. One that cannot be (EIO at its fsync, a rename refused)
        keeps its events in its `.open` file, which the next start closes: the close goes on,
        and a Kafka sink's still sends what is closed and stops its producer."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            try:
                await asyncio.to_thread(self._flush, True)
            except OSError as exc:
                self.segments.failed(exc)
                self.segments.log.error("closing the spool's open segment failed (%s); the "
                                        "next start closes it", exc)  # fmt: skip
            await self.segments.rescan()

    # -- file work (in a thread) -----------------------------------------------------------

    def _append(self, data: bytes) -> None:
        segments = self.segments
        try:
            segments.write(data)  # raises: what it did not write is lost
        except OSError as exc:
            if not segments.at_file_limit:
                raise
            self._write_on(data, exc)
        # Aged too: the flush comes once a flush interval, so a segment waiting for it would
        # live up to twice its age under load.
        if segments.full() or segments.aged():
            try:
                self._rotate()
            except OSError as exc:  # written: the open segment keeps them until a later close
                segments.failed(exc)

    def _write_on(self, data: bytes, exc: OSError) -> None:
        """The open segment reached the file size limit (EFBIG) part way through `data`:
        closed, and the rest written once into a new one. Raises a ShortWrite of what both
        kept when that fails too."""
        kept_lines, kept_bytes = (
            (exc.lines, exc.kept_bytes) if isinstance(exc, ShortWrite) else (0, 0)
        )
        try:
            self._rotate()
        except OSError as rotate_error:
            self.segments.failed(rotate_error)
            raise exc from rotate_error
        try:
            self.segments.write(data[kept_bytes:])
        except ShortWrite as again:
            lines, written = kept_lines + again.lines, kept_bytes + again.kept_bytes
            raise ShortWrite(again, lines, written, again.cut) from again
        except OSError as again:  # nothing of the rest written
            raise ShortWrite(again, kept_lines, kept_bytes, True) from again

    def _flush(self, final: bool) -> None:
        segments = self.segments
        if segments.fd >= 0:
            if final or segments.aged():
                self._rotate()
            else:
                segments.sync()
        segments.finish(segments.retired())  # an abandoned segment's fd, if any

    def _rotate(self) -> None:
        """Close the open segment: fsynced before its closed name makes it readable."""
        segments = self.segments
        segments.sync()
        segments.seal()
        segments.finish(segments.retired())
