"""What a pixel head trickled one byte per read costs the fast path, at two head sizes.

    python -m loadtest.split_heads [--heads 20]

Each head goes through a PixelFastPath in this process (no socket), one `data_received` per
byte, until its pixel is answered. Figures are the fastest of `--heads` runs, in microseconds
per head and per byte; the last line is the ratio of the 8 KiB head's cost to the 1 KiB one's:
about 8 when the work is linear in the head's length, about 64 were it quadratic.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from collector.app import COLLECTOR, create_app
from collector.fastpath import FastPaths, PixelFastPath
from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks.memory import MemorySink

SIZES = (1024, 8192)


class Transport:
    """What PixelFastPath uses of a transport; counts the answers."""

    def __init__(self) -> None:
        self.answers = 0

    def get_extra_info(self, name: str) -> Any:
        return ("203.0.113.7", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.answers += data.count(b"HTTP/1.1 200 OK\r\n")

    def is_closing(self) -> bool:
        return False


def pixel_head(size: int) -> bytes:
    start = b"GET /p.gif?e=open&s=bench HTTP/1.1\r\nHost: t\r\nX-Pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


def best_head_us(paths: FastPaths, size: int, heads: int) -> float:
    """The fastest of `heads` runs of one head of `size` bytes fed a byte per read."""
    head = pixel_head(size)
    reads = [head[i : i + 1] for i in range(len(head))]
    best = float("inf")
    for _ in range(heads):
        connection = PixelFastPath(paths, asyncio.Protocol)
        transport = Transport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        started = time.perf_counter()
        for read in reads:
            connection.data_received(read)
        best = min(best, time.perf_counter() - started)
        paths.send_held()  # as the loop does at the end of the iteration
        connection.connection_lost(None)
        assert transport.answers == 1, "the head was not answered by the fast path"
    return best * 1e6


async def run(heads: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(data_dir=Path(directory), secret="bench-secret-0123456789", linger_ms=5)
        metrics = CollectorMetrics(CollectorRegistry())
        collector = create_app(settings, MemorySink(), metrics)[COLLECTOR]
        paths = FastPaths(collector, metrics, 3600.0, head_timeout_s=3600.0)
        figures = {size: best_head_us(paths, size, heads) for size in SIZES}
        for size, us in figures.items():
            print(f"{size:>6} B head, 1 byte a read: {us:10.0f} us/head {us / size:8.3f} us/byte")
        print(f"ratio {SIZES[1]} B / {SIZES[0]} B: {figures[SIZES[1]] / figures[SIZES[0]]:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=20, help="runs per size (the best counts)")
    asyncio.run(run(parser.parse_args().heads))


if __name__ == "__main__":
    main()
