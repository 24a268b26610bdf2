"""Raw HTTP/1.1 on one connection, and what a collector spooled: for fast-path tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from contract.segments import closed_segments

Answer = tuple[int, list[tuple[str, str]], bytes]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One whole response: status, header lines in order, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].decode("latin-1").split("\r\n")
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines[1:])]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    return int(lines[0].split()[1]), headers, await reader.readexactly(length)


async def one_connection(port: int, requests: list[bytes]) -> list[Answer]:
    """Each request written and answered in turn over one keep-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    for raw in requests:
        writer.write(raw)
        answers.append(await read_answer(reader))
    writer.close()
    return answers


def names(answer: Answer) -> set[str]:
    return {name.lower() for name, _ in answer[1]}


def spooled(data_dir: Path) -> list[dict[str, Any]]:
    """Every event the process left (read after it exited), in order."""
    lines = [x for p in closed_segments(data_dir / "spool") for x in p.read_bytes().splitlines()]
    return [orjson.loads(line) for line in lines]


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])
