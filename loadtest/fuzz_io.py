"""The fuzz run's side of the wire: raw sockets that read every answer, the HTTP client,
slow clients, and the check for input reflected into a response header."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp

from loadtest.fuzz_cases import INJECTED_HEADER, MARKER, Case

READ_TIMEOUT_S = 5.0
HEADER_TIMEOUT_MS = 500  # the collector's under fuzz (loadtest/fuzz.py FUZZ_ENV)
# A started head is cut after at most two header periods; a pixel head, which the fast path
# first holds for one period, after at most three (docs/security.md).
SLOW_HEAD_PERIODS = {"pixel": 3, "other": 2}
# For a loaded machine: runs with 500 ms periods held pixel heads up to 1.54 s (1.5 s due).
SLOW_HEAD_SLACK_S = 0.5
SLOW_HEAD_BOUND_S = {
    kind: periods * HEADER_TIMEOUT_MS / 1000 + SLOW_HEAD_SLACK_S
    for kind, periods in SLOW_HEAD_PERIODS.items()
}
KEEPALIVE_WAIT_S = SLOW_HEAD_BOUND_S["pixel"]
Headers = list[tuple[str, str]]
Answer = tuple[int, Headers]


async def send_raw(port: int, raw: bytes) -> tuple[list[Answer], str]:
    """Write `raw`, read every answer on the connection: (answers, how it ended).

    The end: "final" after an answer that closes the connection; "closed" when the server
    closed it with input unanswered (before any answer, or after a keep-alive one); "idle"
    when nothing followed a keep-alive answer within KEEPALIVE_WAIT_S; "no_answer" when
    nothing came within READ_TIMEOUT_S.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await read_answers(reader, head_only=raw.startswith(b"HEAD "))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_answers(reader: asyncio.StreamReader, head_only: bool) -> tuple[list[Answer], str]:
    answers: list[Answer] = []
    wait_s = READ_TIMEOUT_S
    while True:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_s)
        except TimeoutError:
            return answers, "idle" if answers else "no_answer"
        except (asyncio.IncompleteReadError, ConnectionError):
            return answers, "closed"
        lines = head[:-4].decode("latin-1").split("\r\n")
        pairs = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
        version, status = lines[0].split()[:2]
        answers.append((int(status), pairs))
        fields = {n.lower(): v.lower() for n, v in pairs}
        if fields.get("connection", "keep-alive" if version == "HTTP/1.1" else "close") == "close":
            return answers, "final"  # nothing can follow it
        body_bytes = 0 if head_only or status in ("204", "304") else int(fields["content-length"])
        head_only = False  # only the first request can be a HEAD
        try:
            await asyncio.wait_for(reader.readexactly(body_bytes), READ_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            return answers, "closed"
        # What may still come: the answer to a pipelined head at once, or the cut of an
        # unfinished one within the slow-head bound.
        wait_s = KEEPALIVE_WAIT_S


async def send_client(session: aiohttp.ClientSession, base: str, case: Case) -> Answer:
    async with session.request(
        case.method, base + case.path, headers=case.headers, data=case.body or None
    ) as response:
        await response.read()
        return response.status, [(k, v) for k, v in response.headers.items()]


def reflected(headers: Headers) -> bool:
    """True when a response header carries input: an injected name or the marker."""
    for name, value in headers:
        if name.lower() in (INJECTED_HEADER, "set-cookie") or MARKER in (name + value).lower():
            return True
    return False


async def slow_client(port: int, head: bytes, held_s: list[float]) -> None:
    """Trickle a request head one byte every 100 ms; note how long the server kept it open."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for byte in head + b"s" * 10_000:
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    break
    except ConnectionError:
        pass
    finally:
        held_s.append(time.monotonic() - started)
        writer.close()
