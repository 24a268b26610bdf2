"""HTTP fuzz run: malformed requests against a real `beacon serve` on loopback.

    python -m loadtest.fuzz [--requests 20000] [--concurrency 32] [--seed 1]

Starts a collector (spool sink, in a temporary directory), sends the cases of
loadtest/fuzz_cases.py over raw sockets and an HTTP client, with a few slow clients trickling
request heads meanwhile, and prints: requests, counts per status and category (every answer
on a connection, and each connection closed unanswered), RSS before and after, how long slow
clients held a connection, and what the Prometheus counters saw. The checks
(`Report.problems`) are what tests/integration/test_fuzz_http.py asserts: no 5xx, the process
alive, RSS growth bounded, no input in any response header, every 400 and every unanswered close
counted, slow heads cut within their bound.
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

from loadtest.fuzz_cases import SLOW_HEADS, client_case, raw_case
from loadtest.fuzz_io import (
    HEADER_TIMEOUT_MS,
    SLOW_HEAD_BOUND_S,
    reflected,
    send_client,
    send_raw,
    slow_client,
)

RSS_GROWTH_MAX_BYTES = 50 << 20
SLOW_CLIENTS = 20  # half of each kind of SLOW_HEADS
HEADER_CUTS = 'beacon_connections_timed_out_total{phase="header"}'
# Every 400 is counted once: as a parser refusal, or as a handler's outcome. A refused click
# answers the 400 page (the run sets no BEACON_CLICK_FALLBACK_URL) and is labelled "refused".
COUNTED_400 = (
    "beacon_bad_requests_total",
    'beacon_requests_total{outcome="400"}',
    'beacon_requests_total{endpoint="click",outcome="refused"}',
)
COUNTED = (
    *COUNTED_400,
    "beacon_connections_timed_out_total",
    HEADER_CUTS,
    'beacon_requests_total{endpoint="events"}',
    'beacon_requests_total{endpoint="pixel"}',
)
Process = subprocess.Popen[bytes]


@contextlib.contextmanager
def collector(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[tuple[Process, str]]:
    """A `beacon serve` on a free loopback port: yields (process, base URL); SIGTERM after."""
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
        [sys.executable, "-m", "beacon", "serve", "--workers", "1"], env=env, stderr=log
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
        yield proc, base
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


def total(samples: dict[str, float], selector: str) -> float:
    """The sum of the samples `selector` picks: a name and some labels, 'name{k="v",...}'."""
    name, _, labels = selector.partition("{")
    wanted = [label for label in labels.rstrip("}").split(",") if label]
    return sum(
        v for k, v in samples.items() if k.partition("{")[0] == name and all(w in k for w in wanted)
    )


@dataclass
class Report:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # each answer, and each end
    by_category: Counter[str] = field(default_factory=Counter)
    reflected: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    slow_held_s: dict[str, list[float]] = field(default_factory=dict)  # by SLOW_HEADS kind
    rss_before: int = 0
    rss_after: int = 0
    alive: bool = True
    elapsed_s: float = 0.0
    counted: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def fuzz(
    proc: Process, base: str, requests: int, concurrency: int, seed: int, non_utf8: bool = True
) -> Report:
    report = Report(rss_before=rss_bytes(proc.pid))
    port = int(base.rsplit(":", 1)[1])
    before = scrape(base)
    rng = random.Random(seed)
    # Made as they are sent: a list of 200,000 cases would hold gigabytes of long URLs.
    queue = (
        raw_case(rng, non_utf8) if rng.random() < 0.7 else client_case(rng) for _ in range(requests)
    )
    started = time.monotonic()

    async def worker(session: aiohttp.ClientSession) -> None:
        for case in queue:
            try:
                if case.raw:
                    answers, end = await send_raw(port, case.raw)
                else:
                    answers, end = [await send_client(session, base, case)], "final"
            except (aiohttp.ClientError, OSError) as exc:
                report.errors[f"{case.category}:{type(exc).__name__}"] += 1
                continue
            report.requests += 1
            ends = [end] if end in ("closed", "no_answer") else []
            for label in [str(status) for status, _ in answers] + ends:
                report.statuses[label] += 1
                report.by_category[f"{case.category} {label}"] += 1
            if any(reflected(headers) for _, headers in answers):
                report.reflected.append(f"{case.category}: {case.raw[:120]!r} {case.path[:80]}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        slow = []
        for kind, head in SLOW_HEADS.items():
            held_s = report.slow_held_s.setdefault(kind, [])
            slow += [slow_client(port, head, held_s) for _ in range(SLOW_CLIENTS // 2)]
        slow_done = asyncio.gather(*slow)
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        await slow_done
    report.elapsed_s = time.monotonic() - started
    report.alive = proc.poll() is None  # a dead child stays in /proc until it is reaped
    if report.alive:
        report.rss_after = rss_bytes(proc.pid)
        after = scrape(base)
        for selector in COUNTED:
            report.counted[selector] = total(after, selector) - total(before, selector)
    check(report)
    return report


def check(report: Report) -> None:
    problems = report.problems
    if not report.alive:
        problems.append("the collector died")
        return
    fivexx = {s: n for s, n in report.statuses.items() if s.startswith("5")}
    if fivexx:
        problems.append(f"5xx answers: {fivexx}")
    if report.rss_after - report.rss_before > RSS_GROWTH_MAX_BYTES:
        problems.append(f"RSS grew by {(report.rss_after - report.rss_before) >> 20} MiB")
    if report.reflected:
        problems.append(f"input in a response header: {report.reflected[:3]}")
    if report.errors:
        problems.append(f"client errors: {dict(report.errors)}")
    if report.statuses["no_answer"]:
        problems.append(f"{report.statuses['no_answer']} connections unanswered and open")
    for kind, held_s in report.slow_held_s.items():
        if not held_s or max(held_s) > SLOW_HEAD_BOUND_S[kind]:
            longest = max(held_s, default=0.0)
            problems.append(f"slow {kind} heads held up to {longest:.2f} s")
    counted_400 = sum(report.counted[selector] for selector in COUNTED_400)
    if counted_400 != report.statuses["400"]:
        problems.append(f"400 answers {report.statuses['400']}, {counted_400:.0f} counted")
    # Closed unanswered: heads that never end. Each, and each slow client, is a counted cut.
    unanswered = report.statuses["closed"] + sum(map(len, report.slow_held_s.values()))
    if unanswered != report.counted[HEADER_CUTS]:
        problems.append(
            f"{unanswered} cut without an answer, {report.counted[HEADER_CUTS]:.0f} counted"
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
    print("slow clients " + ", ".join(
        f"{kind} {len(held)} held up to {max(held, default=0.0):.2f} s "
        f"(bound {SLOW_HEAD_BOUND_S[kind]:.2f} s)" for kind, held in report.slow_held_s.items()
    ))  # fmt: skip
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
    with tempfile.TemporaryDirectory() as tmp, collector(Path(tmp), FUZZ_ENV) as (proc, base):
        report = asyncio.run(
            fuzz(proc, base, args.requests, args.concurrency, args.seed, not args.ascii_headers)
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
