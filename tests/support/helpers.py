"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from prometheus_client import CollectorRegistry

from contract.segments import CLOSED_SUFFIX, OPEN_SUFFIX

REPO = Path(__file__).resolve().parents[2]
DAY_S = 86_400


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Return once `condition()` holds; fail naming `what` after a generous deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within the deadline: {what}"
        time.sleep(0.05)


async def clear_of_midnight(needed_s: float, clock: Callable[[], float] = time.time) -> dt.date:
    """The UTC day the next `needed_s` seconds lie in: today, or when midnight is nearer, the
    next day, once midnight has passed. For traffic that a collector times by its own clock,
    with no reference time to pass it: its cookieless visitor ids and visits end at midnight."""
    now = clock()
    while (left_s := DAY_S - now % DAY_S) < needed_s:
        await asyncio.sleep(left_s)
        now = clock()
    return dt.datetime.fromtimestamp(now, dt.UTC).date()


def run_module(module: str, *args: str, timeout_s: float = 600) -> str:
    """`python -m module args` from the repository in a process of its own (chDB opens one
    data directory a process); its standard output, once it has exited 0."""
    run = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def store_port_query(port: int, sql: str, fmt: str = "TSV", timeout_s: float = 60) -> str:
    """One read through a consumer's store port, sent as `beacon report` sends it."""
    body = orjson.dumps({"sql": sql, "format": fmt})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/query", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as r:
        return str(r.read().decode())


class Transport:
    """The edge a fast-path test is not about: what the connection wrote."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return ("203.0.113.7", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0  # every write is taken at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_value(metrics: object, name: str, **labels: str) -> float:
    """A sample from the metrics object's registry, as /metrics would show it (hot-path
    tallies folded in first); 0 when the series was never touched."""
    fold = getattr(metrics, "fold", None)
    if fold is not None:
        fold()
    registry: CollectorRegistry = metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def reference_split(url: str, keep_query: frozenset[str]) -> tuple[str, str, str]:
    """A page URL split by the standard library alone: what event.split_url must agree with."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return "", "", ""
    kept = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.startswith("utm_") or k in keep_query
    ]
    return host, parts.path, urlencode(kept) if kept else ""


def segments_of(spool_dir: Path, pid: int) -> list[str]:
    """Names of the open and closed spool segments process `pid` wrote
    (`<created_ms>-<pid>-<tag>.ndjson[.open]`)."""
    return sorted(
        path.name
        for path in spool_dir.glob("*.ndjson*")
        if path.name.endswith((CLOSED_SUFFIX, OPEN_SUFFIX)) and int(path.name.split("-")[1]) == pid
    )
