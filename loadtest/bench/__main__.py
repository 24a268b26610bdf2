"""Side-by-side HTTP benchmark: each server pinned to one CPU, wrk pinned to another.

    python -m loadtest.bench [--rounds 3] [--duration-s 10] [--connections 64] [--servers ...]

Per round every server is started fresh, warmed up, measured with keep-alive connections for
a fixed time, and stopped; the order rotates from round to round, so drift on a shared machine
falls on all of them alike. Ratios are medians of per-round ratios. Writes
loadtest/results/<date>.json, .md (the table) and .png (the chart), and prints the table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loadtest.bench import report
from loadtest.bench.measure import (
    PIXEL_PATH,
    hot_path_buckets,
    quantile_us,
    run_wrk,
    share_within,
)
from loadtest.bench.servers import REPO, SERVERS, Context, Running, python_env
from loadtest.bench.system import (
    NGINX,
    ensure_tools,
    free_port,
    memory_mb,
    pinned,
    tool_version,
)

RESULTS = REPO / "loadtest" / "results"
KAFKA_SCRIPT = REPO / "deploy" / "kafka" / "kafka.py"


def load_kafka_script() -> ModuleType:
    """deploy/kafka/kafka.py, imported by path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("beacon_deploy_kafka", KAFKA_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def counters(base: str, names: set[str]) -> dict[str, float]:
    """Sums of the samples named `names` on a collector's /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    sums = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in sums:
                sums[sample.name] += sample.value
    return sums


def measure(name: str, round_no: int, opts: argparse.Namespace, workdir: Path, bootstrap: str):  # type: ignore[no-untyped-def]
    """Start one server on the server CPU, warm it up, measure it, stop it."""
    server = SERVERS[name]
    run_dir = workdir / f"{name}-{round_no}"
    run_dir.mkdir()
    running = Running(server, Context(free_port(), run_dir, bootstrap), opts.server_cpu)
    try:
        running.wait_ready()
        run_wrk(running.base, opts.connections, opts.warmup_s, opts.client_cpu)
        before = hot_path_buckets(running.base) if server.beacon else {}
        result: dict[str, Any] = {"round": round_no, "server": name}
        result.update(run_wrk(running.base, opts.connections, opts.duration_s, opts.client_cpu))
        result.update(memory_mb(running.proc.pid))
        if server.beacon:
            after = hot_path_buckets(running.base)
            result["hot_path_p50_us"] = quantile_us(before, after, 0.50)
            result["hot_path_p99_us"] = quantile_us(before, after, 0.99)
            # The budget's own figure: p99 <= 50 us means at least 99% of pixels within it.
            result["hot_path_within_50us"] = share_within(before, after, 50e-6)
            wanted = {
                "beacon_events_accepted_total",
                "beacon_kafka_events_total",
                "beacon_kafka_spilled_events_total",
                "beacon_wal_events_total",
            }
            result["counters"] = counters(running.base, wanted)
        return result
    finally:
        running.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def start_kafka(workdir: Path):  # type: ignore[no-untyped-def]
    """A real broker (the project's script) and the event topics (`beacon kafka init`)."""
    kafka = load_kafka_script()
    broker = kafka.start_broker(workdir / "kafka", free_port(), free_port())
    env = python_env(
        BEACON_KAFKA_BOOTSTRAP=broker.bootstrap,
        # One broker: one copy, and acks=all waits for that one (the defaults want 3 and 2).
        BEACON_KAFKA_REPLICATION="1",
        BEACON_KAFKA_MIN_INSYNC_REPLICAS="1",
    )
    subprocess.run(
        [sys.executable, "-m", "beacon", "kafka", "init"],
        env=env,
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return broker


def machine(opts: argparse.Namespace) -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    versions: dict[str, str | None] = {}
    for package in ("aiohttp", "uvloop", "fastapi", "uvicorn", "aiokafka", "prometheus-client"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": tool_version([NGINX, "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "packages": versions,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration-s", type=int, default=10, help="measured seconds per server")
    p.add_argument("--warmup-s", type=int, default=2, help="unmeasured seconds before that")
    p.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1, help="wrk, the broker and this script")
    p.add_argument("--out", type=Path, default=RESULTS)
    opts = p.parse_args(argv)
    opts.servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    unknown = [s for s in opts.servers if s not in SERVERS]
    if unknown:
        p.error(f"unknown servers {unknown}; choose from {', '.join(SERVERS)}")
    cpus = os.sched_getaffinity(0)
    if opts.server_cpu == opts.client_cpu or not {opts.server_cpu, opts.client_cpu} <= cpus:
        p.error(f"--server-cpu and --client-cpu must be two different CPUs of {sorted(cpus)}")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the running server and the broker are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    ensure_tools()
    os.sched_setaffinity(0, {opts.client_cpu})  # this script stays off the server's core
    workdir = Path(tempfile.mkdtemp(prefix="beacon-bench-"))
    broker = None
    runs: list[dict[str, Any]] = []
    started = time.time()
    try:
        if any(SERVERS[s].needs_kafka for s in opts.servers):
            with pinned(opts.client_cpu):
                broker = start_kafka(workdir)
        for round_no in range(opts.rounds):
            shift = round_no % len(opts.servers)
            for name in opts.servers[shift:] + opts.servers[:shift]:
                try:
                    run = measure(name, round_no, opts, workdir, broker.bootstrap if broker else "")
                except RuntimeError as exc:  # one server that cannot start spoils no other figure
                    print(f"round {round_no + 1}/{opts.rounds} {name}: {exc}", flush=True)
                    continue
                runs.append(run)
                print(
                    f"round {round_no + 1}/{opts.rounds} {name:<14} {run['rps']:>9,.0f} req/s  "
                    f"p50 {run['p50_us'] / 1000:.2f} ms  p99 {run['p99_us'] / 1000:.2f} ms",
                    flush=True,
                )
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = report.summarise(runs)
    table = report.markdown(summary)
    date = time.strftime("%Y-%m-%d", time.localtime(started))
    opts.out.mkdir(parents=True, exist_ok=True)
    params = {
        "rounds": opts.rounds,
        "duration_s": opts.duration_s,
        "warmup_s": opts.warmup_s,
        "connections": opts.connections,
        "wrk_threads": 1,
        "server_cpu": opts.server_cpu,
        "client_cpu": opts.client_cpu,
        "request": "GET " + PIXEL_PATH,
    }
    document = {
        "date": date,
        "machine": machine(opts),
        "params": params,
        "summary": summary,
        "runs": runs,
    }
    report.write_json(opts.out / f"{date}.json", document)
    (opts.out / f"{date}.md").write_text(table)
    title = (
        f"Beacon pixel benchmark {date}: each server on 1 CPU, wrk on another, "
        f"{opts.connections} keep-alive connections, median of {opts.rounds} x {opts.duration_s} s"
    )
    report.chart(summary, opts.out / f"{date}.png", title)
    print()
    print(table)
    print(f"wrote {opts.out}/{date}.json, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
