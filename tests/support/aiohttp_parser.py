"""aiohttp's own parser, as an oracle for the pixel fast path's reading of a head."""

from __future__ import annotations

import asyncio

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage


def aiohttp_message(head: bytes) -> RawRequestMessage:
    """`head` (without its blank line) as the server's parser reads it; raises as it does."""
    loop = asyncio.get_running_loop()
    parser = HttpRequestParser(
        BaseProtocol(loop),
        loop,
        2**16,
        max_line_size=8190,
        max_field_size=8190,
        max_headers=128,
    )
    return parser.feed_data(head + b"\r\n\r\n")[0][0][0]


def aiohttp_parse(head: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, str]]] | str:
    """(headers with lowercased names, query pairs) as the server's parser reads `head`."""
    try:
        message = aiohttp_message(head)
    except Exception as exc:
        return type(exc).__name__
    return [(k.lower(), v) for k, v in message.headers.items()], list(message.url.query.items())
