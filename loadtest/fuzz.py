"""HTTP fuzz run: malformed requests against a real `beacon serve` on loopback.

    python -m loadtest.fuzz [--requests 20000] [--concurrency 32] [--seed 1]

Starts a collector (spool sink, in a temporary directory), sends the cases of
loadtest/fuzz_cases.py over raw sockets and an HTTP client, with a few slow clients trickling
request heads meanwhile, and prints: requests, counts per status and category, RSS before and
after, how long slow clients held a connection, and what the Prometheus counters saw. The
checks (`Report.problems`) are what tests/test_fuzz_http.py asserts: no 5xx, the process
alive, RSS growth bounded, no input in a response header, refused input counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtest.fuzz_cases import INJECTED_HEADER, MARKER, Case, client_case, gzip_bomb, raw_case

RSS_GROWTH_MAX_BYTES = 50 << 20
READ_TIMEOUT_S = 5.0
HEADER_TIMEOUT_MS = 500
SLOW_CLIENTS = 20
HEADER_CUTS = 'beacon_connections_timed_out_total{phase="header"}'
Headers = list[tuple[str, str]]


@contextlib.contextmanager
def collector(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[tuple[int, str]]:
    """A `beacon serve` process on a free loopback port: yields (pid, base URL); SIGTERM after."""
    env = {
        **os.environ,
        "BEACON_DATA_DIR": str(data_dir),
        "BEACON_PORT": "0",
        "BEACON_SINK": "spool",
        "BEACON_DRAIN_MS": "0",
        **(env or {}),
    }
    with socket_port() as port:
        env["BEACON_PORT"] = str(port)
    log = open(data_dir / "collector.log", "wb")  # closed below, after the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--workers", "1"], env=env, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"collector did not start: {proc.poll()}") from None
                time.sleep(0.05)
        yield proc.pid, base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def scrape(base: str) -> dict[str, float]:
    """Every sample of /metrics as 'name{labels}' -> value."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


async def send_raw(port: int, raw: bytes) -> tuple[int | None, Headers, str]:
    """Write `raw`, read one response head: (status or None when closed first, headers, type)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        head = b""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not head:
        return None, [], ""
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
    pairs: Headers = [(h[0], h[1] if len(h) > 1 else "") for h in headers]
    ctype = next((v for k, v in pairs if k.lower() == "content-type"), "")
    return int(lines[0].split()[1]), pairs, ctype


async def send_client(session: aiohttp.ClientSession, base: str, case: Case) -> tuple:
    async with session.request(
        case.method, base + case.path, headers=case.headers, data=case.body or None
    ) as response:
        await response.read()
        return response.status, list(response.raw_headers), response.content_type


def reflected(headers: Headers | list) -> bool:
    """True when a response header carries input: an injected name or the marker."""
    for name, value in headers:
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        value = value.decode("latin-1") if isinstance(value, bytes) else value
        if name.lower() in (INJECTED_HEADER, "set-cookie") or MARKER in (name + value).lower():
            return True
    return False


async def slow_client(port: int, held_s: list[float]) -> None:
    """Trickle a request head one byte every 100 ms; note how long the server kept it open."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for byte in b"GET /p.gif HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 10_000:
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


@dataclass
class Report:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)
    reflected: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    slow_held_s: list[float] = field(default_factory=list)
    rss_before: int = 0
    rss_after: int = 0
    alive: bool = True
    elapsed_s: float = 0.0
    counted: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def fuzz(
    pid: int, base: str, requests: int, concurrency: int, seed: int, non_utf8: bool = True
) -> Report:
    report = Report(rss_before=rss_bytes(pid))
    port = int(base.rsplit(":", 1)[1])
    before = scrape(base)
    rng = random.Random(seed)
    bomb = gzip_bomb(20 << 20)  # 20 MiB of JSON whitespace in ~20 KiB
    # Made as they are sent: a list of 200,000 cases would hold gigabytes of long URLs.
    queue = (
        raw_case(rng, bomb, non_utf8) if rng.random() < 0.7 else client_case(rng)
        for _ in range(requests)
    )
    started = time.monotonic()

    async def worker(session: aiohttp.ClientSession) -> None:
        for case in queue:
            try:
                if case.raw:
                    status, headers, _ = await send_raw(port, case.raw)
                else:
                    status, headers, _ = await send_client(session, base, case)
            except (aiohttp.ClientError, OSError) as exc:
                report.errors[f"{case.category}:{type(exc).__name__}"] += 1
                continue
            report.requests += 1
            label = str(status) if status is not None else "closed"
            report.statuses[label] += 1
            report.by_category[f"{case.category} {label}"] += 1
            if reflected(headers):
                report.reflected.append(f"{case.category}: {case.raw[:120]!r} {case.path[:80]}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        slow = [
            asyncio.create_task(slow_client(port, report.slow_held_s)) for _ in range(SLOW_CLIENTS)
        ]
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        await asyncio.gather(*slow)
    report.elapsed_s = time.monotonic() - started
    report.alive = Path(f"/proc/{pid}").exists()
    report.rss_after = rss_bytes(pid)
    after = scrape(base)
    for prefix in (
        "beacon_bad_requests_total",
        "beacon_connections_timed_out_total",
        HEADER_CUTS,
        'beacon_requests_total{endpoint="events"',
        'beacon_requests_total{endpoint="pixel"',
    ):
        report.counted[prefix] = total(after, prefix) - total(before, prefix)
    check(report)
    return report


def check(report: Report) -> None:
    problems = report.problems
    fivexx = {s: n for s, n in report.statuses.items() if s.startswith("5")}
    if fivexx:
        problems.append(f"5xx answers: {fivexx}")
    if not report.alive:
        problems.append("the collector died")
    if report.rss_after - report.rss_before > RSS_GROWTH_MAX_BYTES:
        problems.append(f"RSS grew by {(report.rss_after - report.rss_before) >> 20} MiB")
    if report.reflected:
        problems.append(f"input in a response header: {report.reflected[:3]}")
    if report.errors:
        problems.append(f"client errors: {dict(report.errors)}")
    bound_s = 2 * HEADER_TIMEOUT_MS / 1000 + 2.0  # two periods, and slack for a busy machine
    if not report.slow_held_s or max(report.slow_held_s) > bound_s:
        problems.append(f"slow clients held connections up to {max(report.slow_held_s):.1f} s")
    parser_400 = report.statuses["400"]
    counted_400 = (
        report.counted["beacon_bad_requests_total"]
        + report.counted['beacon_requests_total{endpoint="events"']
    )
    if counted_400 < parser_400:
        problems.append(f"400 answers {parser_400} but only {counted_400:.0f} counted")
    # Unanswered: heads that never end. Each, and each slow client, is a counted header cut.
    unanswered = report.statuses["closed"] + len(report.slow_held_s)
    if unanswered != report.counted[HEADER_CUTS]:
        problems.append(
            f"{unanswered} cut without an answer, {report.counted[HEADER_CUTS]} counted"
        )


def print_report(report: Report) -> None:
    rate = report.requests / report.elapsed_s if report.elapsed_s else 0.0
    print(f"requests {report.requests} in {report.elapsed_s:.1f} s ({rate:.0f}/s)")
    print("status  " + "  ".join(f"{s}:{n}" for s, n in sorted(report.statuses.items())))
    for key, n in sorted(report.by_category.items()):
        print(f"  {key:<28} {n}")
    mib = 1 << 20
    growth = (report.rss_after - report.rss_before) / mib
    print(f"RSS before {report.rss_before / mib:.1f} MiB, after {report.rss_after / mib:.1f} MiB "
          f"(+{growth:.1f} MiB)")  # fmt: skip
    held = max(report.slow_held_s, default=0.0)
    print(f"slow clients {len(report.slow_held_s)}, longest held {held:.2f} s")
    for key, value in report.counted.items():
        print(f"counted {key}: +{value:.0f}")
    print("problems: " + ("; ".join(report.problems) if report.problems else "none"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--ascii-headers", action="store_true", help="mutate header values with ASCII bytes only"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, collector(Path(tmp), FUZZ_ENV) as (pid, base):
        report = asyncio.run(
            fuzz(pid, base, args.requests, args.concurrency, args.seed, not args.ascii_headers)
        )
    print_report(report)
    return 1 if report.problems else 0


# Tight deadlines so stalled cases end quickly; the rest are the defaults.
FUZZ_ENV = {
    "BEACON_HEADER_TIMEOUT_MS": str(HEADER_TIMEOUT_MS),
    "BEACON_BODY_TIMEOUT_MS": "500",
}

if __name__ == "__main__":
    sys.exit(main())
