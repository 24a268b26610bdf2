"""Every private name of aiohttp (and prometheus_client) the collector reads, in one place.

They are not public API: a minor release may rename them, as 3.13 did `_cookie_helpers`. The
dependency is pinned below the next minor (pyproject.toml); `make test-latest` runs the tests
that guard these names (tests/integration/test_security.py, test_connection_cap.py,
test_fastpath.py, tests/unit/test_tallies.py) against the newest releases before the pin is
moved. KNOWN names the releases these were read from.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp._cookie_helpers import parse_cookie_header  # what Request.cookies uses
from aiohttp.web_protocol import RequestHandler

KNOWN = ("3.13", "3.14")
__all__ = ["KNOWN", "parse_cookie_header"]


def tested_release() -> bool:
    """This aiohttp is of a minor release these names were read from."""
    return aiohttp.__version__.startswith(KNOWN)


def protocol_factory(server: web.Server, cls: type[RequestHandler]) -> Callable[[], Any]:
    """A factory of `cls` protocols made as `server` makes its own: web.Server.__call__
    passes its private `_loop` and `_kwargs` on."""
    loop, kwargs = server._loop, server._kwargs
    return lambda: cls(server, loop=loop, **kwargs)


def requests_seen(handler: RequestHandler) -> int:
    """Request heads parsed on this connection so far."""
    return handler._request_count


def request_in_progress(handler: RequestHandler) -> bool:
    """A request is being handled on this connection."""
    return handler._current_request is not None


def waiting_for_request(handler: RequestHandler) -> bool:
    """aiohttp waits for the next request (its own keep-alive close tests the same waiter)."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


async def serve_site(
    site: web.TCPSite, factory: Callable[[], asyncio.Protocol], sock: socket.socket | None = None
) -> None:
    """web.TCPSite.start with another protocol factory (aiohttp 3.14's, `sockets` guard
    included): sets the site's private `_server` and `_bound_port` as it does. `sock`: a
    listening socket made elsewhere, served instead of binding the site's address."""
    await web.BaseSite.start(site)  # registers the site with its runner
    loop = asyncio.get_running_loop()
    if sock is not None:
        site._server = await loop.create_server(factory, sock=sock, ssl=site._ssl_context)
    else:
        site._server = await loop.create_server(
            factory,
            site._host,
            site._port,
            ssl=site._ssl_context,
            backlog=site._backlog,
            reuse_address=site._reuse_address,
            reuse_port=site._reuse_port,
        )
    sockets = site._server.sockets
    site._bound_port = sockets[0].getsockname()[1] if sockets else site._port


def histogram_state(child: Any) -> tuple[list[float], list[Any], Any]:
    """prometheus_client's Histogram child: its upper bounds, bucket counters and sum counter,
    which collector/tallies.py adds to in one go (there is no public bulk observe)."""
    return list(child._upper_bounds), child._buckets, child._sum
