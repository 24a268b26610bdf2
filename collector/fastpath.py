"""The pixel answered below aiohttp's web layer, aiohttp serving everything else.

Under load aiohttp's own work (a Request, routing, a handler coroutine, a Response serialised
header by header) was about 60% of the collector's CPU (docs/performance.md), while a pixel
request is a GET with a query and a few headers, always answered with the same 43 bytes. Each
connection starts with `PixelFastPath`: it answers complete `GET /p.gif` heads itself,
through the same `Collector.pixel_outcome` as the aiohttp route. At the first bytes that are
anything else (another path or method, HTTP/1.0, a body, a header it does not accept, a pixel
head split across reads whose rest does not come within BEACON_HEADER_TIMEOUT_MS) it hands
the connection, those bytes first, to aiohttp's protocol for good. What it accepts is a strict
subset of what aiohttp's parser accepts, and it builds the same header and query objects from
it, so both paths record the same event; the only difference a client sees is that the fast
answer carries no Server header.

The rate limit applies here as in the middleware, from the same buckets, and the visitor
cookie is read with aiohttp's own Cookie parser and set with the same Set-Cookie line. Off
(BEACON_PIXEL_FAST_PATH=0) every connection goes to aiohttp at once.

A head split across reads is kept by `SplitHead` (collector/splithead.py), at a cost linear in
its length however it is cut; each connection holds a place under the worker's connection cap
(collector/conncap.py), which aiohttp's side takes over at a hand-over.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, cast

# aiohttp's own Cookie header parser, the one its Request.cookies calls (not public API; tests
# compare both paths' answers and events in cookie mode).
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from collector.aiohttp_compat import parse_cookie_header
from collector.handlers import Collector
from collector.head_limits import MAX_FIELD_BYTES, MAX_HEADERS, MAX_LINE_BYTES
from collector.metrics import CollectorMetrics
from collector.pixel import GIF_BYTES, PIXEL_HEADERS
from collector.settings import Settings
from collector.splithead import COMPLETE, WAITING, SplitHead, first_part_verdict

if TYPE_CHECKING:
    from collector.conncap import ConnectionCap

log = logging.getLogger("beacon.collector")

PATH = "/p.gif"
_PROBES = (b"GET /healthz ", b"GET /readyz ", b"GET /metrics ")
_LINE_LIMIT = min(MAX_LINE_BYTES, MAX_FIELD_BYTES)
# A head the fast path answers, matched in one pass: the request line with its query, then
# header lines of a token name and a value of printable ASCII, tab and bytes >= 0x80. No
# fragment, no other version, no bare CR or LF, no obs-fold, no NUL or other controls: those,
# and every other request, are aiohttp's to answer or refuse.
_HEAD_RE = re.compile(
    rb"GET /p\.gif(?:\?([!\"$-~]*))? HTTP/1\.1"
    rb"((?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*)*)"
)
# In the lowercased header block: a body, a protocol switch, a continuation or a connection
# other than keep-alive, each aiohttp's business.
_HANDED_OVER_RE = re.compile(
    rb"\r\n(?:(?:content-length|transfer-encoding|upgrade|expect):"
    rb"|connection:[ \t]*+(?!keep-alive[ \t]*(?:\r\n|\Z)))"
)
_NAME_RE = re.compile(rb"\r\n([^:]+):")
# Name and value, the value without the whitespace around it (llhttp drops it too).
_FIELD_RE = re.compile(r"\r\n([^:]+):[ \t]*+((?:[^\r]*[^\r \t])?)")
# The answer's head up to the Date line; a Set-Cookie goes before Content-Length, as aiohttp
# orders them.
_HEAD_START = (
    "HTTP/1.1 200 OK\r\n" + "".join(f"{name}: {value}\r\n" for name, value in PIXEL_HEADERS.items())
).encode()
_LENGTH_LINE = f"Content-Length: {len(GIF_BYTES)}\r\n".encode()
_RESPONSE_HEAD = _HEAD_START + _LENGTH_LINE
# Reads within one millisecond that make a worker hold its answers (FastPaths.busy): 8,000
# reads a second and more.
BUSY_READS = 8


class PixelRequest:
    """What `Collector.pixel_outcome` reads of a request, as aiohttp's Request presents it."""

    __slots__ = ("_query", "_query_string", "headers", "remote")
    method = "GET"

    def __init__(self, query_string: str, headers: CIMultiDictProxy[str], remote: str) -> None:
        self._query_string = query_string
        self._query: MultiDictProxy[str] | None = None
        self.headers = headers
        self.remote = remote

    @property
    def query(self) -> MultiDictProxy[str]:
        if self._query is None:
            # The same yarl call aiohttp's parser makes, so the same pairs (+, %, blanks).
            url = URL.build(path=PATH, query_string=self._query_string, encoded=True)
            self._query = url.query
        return self._query

    @property
    def cookies(self) -> dict[str, str]:
        # As aiohttp's Request.cookies: the first Cookie header, the same parser.
        parsed = parse_cookie_header(self.headers.get("Cookie", ""))
        return {name: morsel.value for name, morsel in parsed}


def parse_head(head: bytes) -> PixelRequest | str:
    """A pixel request from one complete head (without its blank line), or why not.

    Every check is one pass in C: a pixel's head is parsed in a few microseconds."""
    match = _HEAD_RE.fullmatch(head)
    if match is None:
        return "other_request"
    if len(head) >= _LINE_LIMIT and max(map(len, head.split(b"\r\n"))) >= _LINE_LIMIT:
        return "other_request"  # aiohttp's parser answers 400
    query, block = match.groups(b"")
    lower = block.lower()
    if _HANDED_OVER_RE.search(lower):
        return "other_request"
    names = _NAME_RE.findall(lower)
    distinct = set(names)
    if len(names) > MAX_HEADERS or len(distinct) != len(names) or b"host" not in distinct:
        return "other_request"  # aiohttp refuses repeats of some (Host) and a missing Host
    fields = _FIELD_RE.findall(block.decode("utf-8", "surrogateescape"))
    return PixelRequest(query.decode("ascii"), CIMultiDictProxy(CIMultiDict(fields)), "")


class DateHeader:
    """The Date header line, formatted once a second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"Date: {formatdate(now, usegmt=True)}\r\n\r\n".encode()
        return self._line


def fast_paths(
    settings: Settings,
    collector: Collector,
    metrics: CollectorMetrics,
    cap: ConnectionCap | None = None,
) -> FastPaths | None:
    """The fast path for a site, or None when it is off."""
    if not settings.pixel_fast_path:
        return None
    return FastPaths(
        collector,
        metrics,
        idle_timeout_s=settings.keepalive_timeout_ms / 1000,
        head_timeout_s=settings.header_timeout_ms / 1000,
        cap=cap,
    )


class FastPaths:
    """The open fast-path connections of one site, closed together when it stops."""

    def __init__(
        self,
        collector: Collector,
        metrics: CollectorMetrics,
        idle_timeout_s: float,
        head_timeout_s: float = 0.0,
        cap: ConnectionCap | None = None,
    ) -> None:
        self.collector = collector
        self.cap = cap  # None: no cap (in-process tests of the protocol)
        self.idle_timeout_s = idle_timeout_s
        self.head_timeout_s = head_timeout_s  # 0: a split head goes to aiohttp at once
        self.date = DateHeader()
        self.open: set[PixelFastPath] = set()
        self.closed = False  # close_all ran: a connection made since is closed at once
        self.handed_over = {
            reason: metrics.fast_path_handoffs.labels(reason)
            for reason in ("other_request", "probe", "split_head")
        }
        # Answers held to the end of the loop iteration (`hold`): (connection, answer, how
        # many of its pixels' events wait for the write-ahead log's write).
        self.held: list[tuple[PixelFastPath, bytes, int]] = []
        self.holding = False  # under load (`busy`): reads hold their answers
        self._tick_ms = 0  # the millisecond of the last read, and the reads within it
        self._tick_reads = 0

    def busy(self) -> bool:
        """Whether a read should hold its answer (`hold`), asked once a read.

        Sending the answers of all the reads a loop iteration took after them, rather than
        each as its read is done, answered 50-60% more pixels per core under load (a worker,
        32 connections, every sink: docs/performance.md). But holding costs a loop iteration
        of its own, which one connection's pixels, a read an iteration, pay on each (3.4k-3.7k
        against 3.8k-4.4k pixels/s). So reads hold once BUSY_READS of them come within one
        millisecond, until an iteration holds a single answer."""
        if not self.holding:
            now_ms = time.monotonic_ns() // 1_000_000
            if now_ms != self._tick_ms:
                self._tick_ms, self._tick_reads = now_ms, 0
            self._tick_reads += 1
            self.holding = self._tick_reads >= BUSY_READS
        return self.holding

    def hold(self, connection: PixelFastPath, answer: bytes, staged: int) -> None:
        """Send `answer` at the end of this loop iteration, with every other read's; with
        the write-ahead log, the events of those reads are written first, in one write
        (collector/spool/wal.py)."""
        if not self.held:
            asyncio.get_running_loop().call_soon(self.send_held)
        self.held.append((connection, answer, staged))

    def send_held(self) -> None:
        """The log's write of the held answers' events, then the answers (also called before
        a connection goes to aiohttp, whose answers come after, and at the stop)."""
        held, self.held = self.held, []
        if len(held) < 2:  # the load is gone: answer each read as it is done again
            self.holding = False
            self._tick_reads = 0
        wal = self.collector.buffer.wal
        refused = "" if wal is None else wal.commit()
        staged = 0
        for connection, answer, waiting in held:
            staged += waiting
            connection.send(answer)
        if staged:  # the pixels are answered all the same (a cookie issued stays issued)
            self.collector.pixels_logged(staged, refused)

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for the listening socket: the fast path in front of `inner`."""
        return lambda: PixelFastPath(self, inner)

    def close_all(self) -> None:
        """Close every connection, and from now on each one made (accepted as the listener
        closed: its connection_made runs a loop turn later, past this)."""
        self.send_held()
        self.closed = True
        for connection in list(self.open):
            connection.close()


class PixelFastPath(asyncio.Protocol):
    """One connection: pixels answered here until the first other request, then aiohttp's."""

    __slots__ = (
        "_active", "_head_timer", "_held", "_make_inner", "_paths", "_paused", "_remote",
        "_split", "_timer", "_transport",
    )  # fmt: skip

    def __init__(self, paths: FastPaths, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self._paths = paths
        self._make_inner = make_inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._active = False
        self._paused = False
        self._remote = ""
        self._split: SplitHead | None = None  # a pixel head whose rest has not arrived yet
        self._head_timer: asyncio.TimerHandle | None = None
        self._held = False  # an answer waits in FastPaths.held

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer: Any = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else ""  # as aiohttp's request.remote
        if self._paths.closed:  # stopping: its pixels would come after the buffer's last drain
            transport.close()
            return
        cap = self._paths.cap
        if cap is not None and not cap.admit(self, transport):
            return  # closed at once: over the connection cap, no idle connection to close
        self._paths.open.add(self)
        self._arm()

    def idle(self) -> bool:
        """Nothing in progress: every pixel read so far is answered and sent (for the
        connection cap; a close waits for unsent answers, which a client may never read)."""
        transport = self._transport
        return (
            self._split is None
            and not self._held
            and (transport is None or not transport.get_write_buffer_size())
        )

    def quiet(self) -> bool:
        """Nothing received since the idle timer's last check (for the connection cap)."""
        return not self._active

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._active = True
        if self._split is not None:  # its deadline keeps running until the head completes
            whole = self._rest_of_head(self._split, data)
            if whole is None:
                return
            data = whole
        # With the write-ahead log, a read's events go in one write before its answers; under
        # load, answers are held to the end of the loop iteration (FastPaths.busy), and the
        # events of all the reads it took go in one write.
        paths = self._paths
        wal = paths.collector.buffer.wal
        hold = paths.busy()
        if wal is None:
            answers, staged, start, reason = self._answer(data, False)
        else:
            wal.grouping = True
            try:
                answers, staged, start, reason = self._answer(data, True)
            finally:
                wal.grouping = False
        if answers:
            if hold:
                self._held = True
                paths.hold(self, b"".join(answers), staged)
            else:
                if staged:
                    assert wal is not None
                    paths.collector.pixels_logged(staged, wal.commit())
                self._transport.write(b"".join(answers))
        if reason:
            paths.handed_over[reason].inc()
            self._hand_over(data[start:])

    def _answer(self, data: bytes, staging: bool) -> tuple[list[bytes], int, int, str]:
        """The answers to the whole pixel heads at the start of `data`; how many of them wait
        for the log's write (`staging`); where the rest starts; why it goes to aiohttp (or
        waits for its end: "")."""
        answers: list[bytes] = []
        staged = 0
        start = 0
        while start < len(data):
            end = data.find(b"\r\n\r\n", start)
            if end < 0:
                return answers, staged, start, self._wait_for_rest(data[start:])
            if self._head_timer is not None:  # a split head completed
                self._stop_head_timer()
            parsed = parse_head(data[start:end])
            if isinstance(parsed, str):
                probe = data.startswith(_PROBES, start)  # health checks and scrapes, apart
                return answers, staged, start, "probe" if probe else parsed
            staged += self._pixel(parsed, answers, staging)
            start = end + 4
        return answers, staged, start, ""

    def _pixel(self, parsed: PixelRequest, answers: list[bytes], staging: bool) -> bool:
        """Records one pixel and adds its answer; True when its event waits for the log."""
        started = time.perf_counter()
        collector = self._paths.collector
        parsed.remote = self._remote
        issued: list[int] = []  # a new visitor cookie id (cookie mode, consented)
        try:
            if collector.over_limit("pixel", parsed):
                outcome = "rate_limited"  # the GIF all the same, nothing recorded
            else:
                outcome = collector.pixel_outcome(parsed, issued)
        except Exception:  # a bug: aiohttp would answer 500, a pixel gets its GIF anyway
            log.exception("pixel event failed")
            outcome = "error"
        if issued:
            cookie = collector.visitor_ids.set_cookie_line(issued)
            answers += (_HEAD_START, cookie, _LENGTH_LINE)
        else:
            answers.append(_RESPONSE_HEAD)
        answers.append(self._paths.date())
        answers.append(GIF_BYTES)
        if staging and outcome == "recorded":
            collector.pixel_staged(started)
            return True
        collector.pixel_done(outcome, started)
        return False

    def send(self, answer: bytes) -> None:
        """A held answer (FastPaths.send_held); the client may have gone meanwhile."""
        self._held = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(answer)

    def _rest_of_head(self, split: SplitHead, data: bytes) -> bytes | None:
        """The bytes to answer from once a split head completed; None while it waits for
        more, or when the connection went to aiohttp."""
        verdict = split.add(data)
        if verdict == WAITING:
            return None
        self._split = None
        data = split.join()
        if verdict == COMPLETE:
            return data
        self._paths.handed_over[verdict].inc()
        self._hand_over(data)
        return None

    def _wait_for_rest(self, head: bytes) -> str:
        """Keeps the start of a pixel head for the next read; or why it goes to aiohttp."""
        reason = first_part_verdict(head)
        if reason != WAITING:
            return reason
        timeout_s = self._paths.head_timeout_s
        if not timeout_s:
            return "split_head"
        self._split = SplitHead(head)
        if self._head_timer is None:  # from its first part: more parts do not extend it
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(timeout_s, self._head_expired)
        return ""

    def _head_expired(self) -> None:
        """A split pixel head that did not complete in time: aiohttp's slow-client deadline
        takes it from here (collector/limits.py)."""
        self._head_timer = None
        split, self._split = self._split, None
        self._paths.handed_over["split_head"].inc()
        self._hand_over(b"" if split is None else split.join())

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _hand_over(self, rest: bytes) -> None:
        """aiohttp's protocol takes the connection from `rest` on; this one steps out."""
        assert self._transport is not None
        if self._held:
            self._paths.send_held()  # its answers before aiohttp's to what follows
        self._disarm()
        inner = self._make_inner()
        inner.connection_made(self._transport)
        self._transport.set_protocol(inner)
        if self._paused:  # aiohttp waits for resume_writing itself and never paused reading
            self._transport.resume_reading()
            inner.pause_writing()
        inner.data_received(rest)

    def eof_received(self) -> bool:
        return False  # close: nothing is in progress here

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()

    def pause_writing(self) -> None:
        # A client that sends pixels faster than it reads the answers waits for itself.
        assert self._transport is not None
        self._paused = True
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        assert self._transport is not None
        self._paused = False
        self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._disarm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._paths.idle_timeout_s, self._check_idle)

    def _disarm(self) -> None:
        self._paths.open.discard(self)
        if self._paths.cap is not None:  # handed over: aiohttp's side takes the place
            self._paths.cap.release(self)
        self._stop_head_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        """Closes a connection that sent nothing for a whole period, as aiohttp's keep-alive
        timeout does (here after one to two periods)."""
        if not self._active:
            self._timer = None
            self.close()
            return
        self._active = False
        self._arm()
