"""The start of a pixel head whose rest has not arrived yet, kept by the fast path.

A head can come in many reads (a long page URL, a small MSS, or a client trickling it a byte at
a time on purpose). Joining the parts and scanning the whole head again on every read costs
time quadratic in its length: 16 KiB trickled a byte at a time is 16 Ki joins and scans of up
to 16 KiB each. Here each read is examined once, with 3 bytes of the previous ones (a CRLFCRLF
may straddle reads), and the parts are joined once, when the head completes or is handed over:
linear in the head's length, and bounded by `SPLIT_HEAD_MAX_BYTES`.
"""

from __future__ import annotations

import re

PIXEL_START = b"GET /p.gif"
END_OF_HEAD = b"\r\n\r\n"
# A pixel head split across reads waits for its rest up to this size and BEACON_HEADER_
# TIMEOUT_MS; beyond either, aiohttp and its own limits (8190-byte lines, 128 headers) take it.
SPLIT_HEAD_MAX_BYTES = 16 * 1024
# What no pixel head here holds (a line feed without its CR, NUL): such a start goes to aiohttp
# at once, whose parser answers it, instead of waiting for a blank line that may never come.
NEVER_IN_HEAD_RE = re.compile(rb"(?<!\r)\n|\x00")
_OVERLAP = len(END_OF_HEAD) - 1

# What `SplitHead.add` found: wait for more, a whole head, or the reason to hand over.
WAITING = ""
COMPLETE = "complete"


def first_part_verdict(head: bytes) -> str:
    """For the first part of a head (no blank line in it): WAITING when it may still become a
    pixel head, else the reason it goes to aiohttp."""
    if not (head.startswith(PIXEL_START) or PIXEL_START.startswith(head)):
        return "other_request"
    if NEVER_IN_HEAD_RE.search(head):
        return "other_request"
    if len(head) > SPLIT_HEAD_MAX_BYTES:
        return "split_head"
    return WAITING


class SplitHead:
    """The parts of one head so far; `scanned_bytes` and `joined_bytes` say what it cost."""

    __slots__ = ("_parts", "_tail", "joined_bytes", "scanned_bytes", "size")

    def __init__(self, first: bytes) -> None:
        """`first` passed `first_part_verdict`: a possible pixel start, without a blank line."""
        self._parts = [first]
        self._tail = first[-_OVERLAP:]  # where a CRLFCRLF across reads starts
        self.size = len(first)
        self.scanned_bytes = len(first)
        self.joined_bytes = 0

    def add(self, data: bytes) -> str:
        """Takes the next read: WAITING, COMPLETE (a blank line arrived; `join` then gives
        everything received), or why the connection goes to aiohttp."""
        known = len(self._tail)
        window = self._tail + data
        self.scanned_bytes += len(window)
        self._parts.append(data)
        self.size += len(data)
        if window.find(END_OF_HEAD) >= 0:
            return COMPLETE
        if self.size - len(data) < len(PIXEL_START):  # the start is not known to be a pixel's
            start = b"".join(self._parts)[: len(PIXEL_START)]
            if not (start.startswith(PIXEL_START) or PIXEL_START.startswith(start)):
                return "other_request"
        # From the first new byte on: the look-behind still sees the byte before it.
        if NEVER_IN_HEAD_RE.search(window, known):
            return "other_request"
        if self.size > SPLIT_HEAD_MAX_BYTES:
            return "split_head"
        self._tail = window[-_OVERLAP:]
        return WAITING

    def join(self) -> bytes:
        """Every byte received so far, once."""
        data = b"".join(self._parts)
        self.joined_bytes += len(data)
        self._parts = [data]
        return data
