"""Connection limits: request head and body deadlines against slow clients, the sizes the HTTP
parser accepts, and a count of what it refuses.

aiohttp closes an idle keep-alive connection, but a client that trickles a request head (one
byte a second, "slowloris") or a body holds its connection for as long as the keep-alive
timeout, an hour by default: a few thousand such clients exhaust the file descriptors. Here a
head must complete within `header_timeout_ms` and a POST /e body within `body_timeout_ms`.
Idle connections are bounded by the connection cap (collector/conncap.py), which the
connection's protocol here tells whether it is idle.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from collector import aiohttp_compat as compat
from collector.errors import json_error
from collector.head_limits import MAX_FIELD_BYTES, MAX_HEADERS, MAX_LINE_BYTES
from collector.metrics import CollectorMetrics, reason_of
from collector.settings import Settings

if TYPE_CHECKING:
    from collector.conncap import ConnectionCap
    from collector.fastpath import FastPaths

# After a response, how long a body nobody reads (a GET with a body) is drained before close.
LINGERING_S = 2.0


class ParserErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, but a request its HTTP parser refused is counted, not logged.

    aiohttp logs every malformed request with a traceback at ERROR (BadHttpMethod at DEBUG):
    anyone could fill the log, and the traceback quotes the client's bytes. Real handler
    errors still go to the log as before.
    """

    def __init__(self, metrics: CollectorMetrics, logger: logging.Logger = server_logger) -> None:
        super().__init__(logger, {})
        self.metrics = metrics

    def _counted(self, exc_info: Any) -> bool:
        if isinstance(exc_info, HttpProcessingError):
            self.metrics.bad_requests.labels(reason_of(exc_info)).inc()
            return True
        if isinstance(exc_info, RequestPayloadError):
            # A broken chunked or compressed body: after the response aiohttp drains the rest
            # of the body and meets the error again, once per request, whoever read it first.
            self.metrics.bad_requests.labels("malformed_body").inc()
            return True
        return False

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if not self._counted(exc_info):
            super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self._counted(kwargs.get("exc_info")):
            super().debug(msg, *args, **kwargs)


class OwnWords(RequestHandler):
    """aiohttp's protocol, its parser's refusals answered with their reason label only.

    aiohttp's own 400 body quotes the refused bytes back (`Invalid method encountered:
    b'<html>...'`): a client learns nothing more from them than from the label, and no
    request text is echoed into an answer.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            message = f"{status} {reason_of(exc)}\n"
        return super().handle_error(request, status, exc, message)


def own_words(server: web.Server) -> Callable[[], RequestHandler]:
    """A protocol factory like `server` itself, making OwnWords protocols."""
    return compat.protocol_factory(server, OwnWords)


def handler_options(settings: Settings, metrics: CollectorMetrics) -> dict[str, Any]:
    """aiohttp RequestHandler options for web.AppRunner."""
    return {
        "keepalive_timeout": settings.keepalive_timeout_ms / 1000,
        "max_line_size": MAX_LINE_BYTES,
        "max_field_size": MAX_FIELD_BYTES,
        "max_headers": MAX_HEADERS,
        "lingering_time": LINGERING_S,
        "logger": ParserErrorLog(metrics),
    }


class GuardedConnection(asyncio.Protocol):
    """Wraps aiohttp's protocol: a place under the connection cap, and a deadline on heads.

    The cap (collector/conncap.py) asks whether the connection is idle: aiohttp waits for the
    next request and no bytes of one have come. With a `period_s`, a timer per connection fires
    every `period_s`. A connection that received bytes in one period without completing a
    request head, and completed none by the next check, with no request in progress (a body
    being read is the body deadline's business), is closed: a started head lasts at most two
    periods, trickled or gone silent. A connection that sent nothing since its last request is
    idle, left to the keep-alive timeout. The hot path pays a few attribute reads per read.
    """

    __slots__ = (
        "_active", "_cap", "_inner", "_metrics", "_partial", "_period_s", "_seen", "_stalled",
        "_timer", "_transport",
    )  # fmt: skip

    def __init__(
        self,
        inner: RequestHandler,
        period_s: float,
        metrics: CollectorMetrics,
        cap: ConnectionCap | None = None,
    ) -> None:
        self._inner = inner
        self._period_s = period_s  # 0: no head deadline
        self._metrics = metrics
        self._cap = cap
        self._timer: asyncio.TimerHandle | None = None
        self._active = False
        self._stalled = False
        self._partial = False  # bytes of a request head came, the head did not complete yet
        self._seen = 0
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if self._cap is not None and not self._cap.admit(self, transport):
            return  # closed at once: over the connection cap, no idle connection to close
        self._inner.connection_made(transport)
        if self._period_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self._period_s, self._check)

    def data_received(self, data: bytes) -> None:
        self._active = True
        inner = self._inner
        count = compat.requests_seen(inner)
        inner.data_received(data)
        # Bytes that completed no head while no request is handled: the start of a head.
        self._partial = compat.requests_seen(inner) == count and not compat.request_in_progress(
            inner
        )

    def eof_received(self) -> None:
        self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._cap is not None:
            self._cap.release(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def idle(self) -> bool:
        """aiohttp waits for a request, none has started and every answer is sent (for the
        connection cap; a close waits for unsent bytes, which a client may never read)."""
        if self._partial or not compat.waiting_for_request(self._inner):
            return False
        transport = cast(asyncio.Transport, self._transport)  # uvloop's is not a subclass
        return transport is None or not transport.get_write_buffer_size()

    def quiet(self) -> bool:
        """Nothing received in this period (for the connection cap)."""
        return not self._active

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _check(self) -> None:
        # aiohttp counts parsed request heads per connection and holds the request being
        # handled; neither is public, so tests/integration/test_security.py guards this behaviour.
        count = compat.requests_seen(self._inner)
        if count != self._seen or compat.request_in_progress(self._inner):
            self._stalled = False
        elif self._active or self._stalled:
            if self._stalled:
                self._timer = None
                self._metrics.connections_timed_out.labels("header").inc()
                if self._transport is not None:
                    self._transport.close()
                return
            self._stalled = True
        self._seen = count
        self._active = False
        self._timer = asyncio.get_running_loop().call_later(self._period_s, self._check)


class GuardedSite(web.TCPSite):
    """web.TCPSite whose connections are GuardedConnections (plain aiohttp ones when there is
    neither a head deadline nor a cap), behind the pixel fast path when one is given
    (collector/fastpath.py)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        header_timeout_s: float,
        metrics: CollectorMetrics,
        reuse_port: bool = False,
        fast_paths: FastPaths | None = None,
        cap: ConnectionCap | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(runner, host, port, reuse_port=reuse_port)
        self._header_timeout_s = header_timeout_s
        self._metrics = metrics
        self._fast_paths = fast_paths
        self._cap = cap
        self._sock = sock  # listening already (collector/workers.py), else host:port is bound

    async def start(self) -> None:
        server = self._runner.server
        assert server is not None
        period_s, metrics, cap = self._header_timeout_s, self._metrics, self._cap

        inner = own_words(server)

        def guarded() -> asyncio.Protocol:
            return GuardedConnection(inner(), period_s, metrics, cap)

        wrapped = period_s > 0 or cap is not None
        factory: Callable[[], asyncio.Protocol] = guarded if wrapped else inner
        if self._fast_paths is not None:
            factory = self._fast_paths.factory(factory)
        await compat.serve_site(self, factory, self._sock)  # TCPSite.start, the factory wrapped

    async def stop(self) -> None:
        await super().stop()  # no new connections
        if self._fast_paths is not None:
            # Nothing is in progress on them (each pixel is answered as it is read, or at the
            # end of its loop iteration: close_all sends those first), and the buffer closes
            # after this: no event may arrive on them then.
            self._fast_paths.close_all()
        if self._cap is not None:
            self._cap.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def body_guard(handler: Handler, timeout_ms: int, metrics: CollectorMetrics) -> Handler:
    """`handler` (POST /e) with a deadline on reading its body, and malformed bodies as 400.

    The handler's only wait is reading the body, so a deadline on the whole call is one on
    the body. A broken chunked or compressed body makes aiohttp raise from `read()`, which the
    handler does not expect: it is answered here instead of with a 500.
    """
    timeout_s = timeout_ms / 1000 if timeout_ms else None

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(timeout_s):
                return await handler(request)
        except TimeoutError:
            metrics.connections_timed_out.labels("body").inc()
            response = json_error(408, "body_timeout")
        except RequestPayloadError:  # counted by ParserErrorLog, when aiohttp drains the body
            response = json_error(400, "malformed_body")
        response.force_close()  # the rest of the body is not worth waiting for
        return response

    return guarded
