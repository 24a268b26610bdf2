"""The whole box: how many pixels a second `beacon run` answers and stores, against its collector
alone, in one run.

    python -m loadtest.bench_e2e [--duration-s 30] [--connections 64] [--kafka]

1. `beacon serve` with the memory sink (nothing behind it), default workers: wrk at full speed
   for --duration-s. Its answered rate is what the collector alone does on this box.
2. `beacon run` with its defaults (collector + consumer + embedded ClickHouse, the spool between
   them): the same wrk, then wait until every answered pixel is stored (distinct event ids, read
   through the store port). Prints answered, stored, drain seconds, peak spool bytes and the
   sustained rate: stored / (load + drain).
3. --kafka: the same `beacon run` against the project's local broker (the collector's Kafka
   sink, a Kafka consumer group); printed, no goal: the broker shares the two cores.

wrk, Beacon and the broker share the machine's cores, as they would on one box; nothing is
pinned. Each side also prints where the box's CPU went from the load's start to the drain's
end: Beacon's consumer process (chDB's threads included) apart from the rest of Beacon (the
collector's workers and their supervisors), and wrk. Results go to
loadtest/results/<date>-e2e.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtest.bench.__main__ import start_kafka
from loadtest.bench.measure import run_wrk
from loadtest.bench.servers import http_status, python_env
from loadtest.bench.system import ensure_tools, free_port
from loadtest.reconcile import store_query

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtest" / "results"
READY_TIMEOUT_S = 120
DRAIN_STALL_S = 120  # no new row for this long: give up waiting


class Beacon:
    """`beacon serve` or `beacon run` in a process group of its own."""

    def __init__(self, command: list[str], workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.store_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.env = python_env(
            BEACON_HOST="127.0.0.1",
            BEACON_PORT=str(self.port),
            BEACON_STORE_PORT=str(self.store_port),
            BEACON_DATA_DIR=str(self.data_dir),
            BEACON_SECRET="bench-secret-0123",
            BEACON_LOG_LEVEL="WARNING",
            **env,
        )
        self.log = open(workdir / "beacon.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "beacon", *command], env=self.env, cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, store: bool) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"beacon exited with {self.proc.returncode}")
            try:
                if http_status(self.base + "/readyz") == 200 and (not store or self.stored() >= 0):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("beacon did not get ready")

    def stored(self) -> int:
        """Distinct events in beacon.events, through the store port: an event stored twice (a
        producer's retry, a replay) awaits a merge, and counted as two it could hide a loss."""
        sql = "SELECT uniqExact(event_id) FROM beacon.events"
        return int(store_query(f"http://127.0.0.1:{self.store_port}", sql, 30).strip())

    def spool_bytes(self) -> int:
        spool = self.data_dir / "spool"
        try:
            return sum(p.stat().st_size for p in spool.iterdir() if p.is_file())
        except OSError:
            return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds so far of the live process `root` and its descendants: the consumer (its
    every thread) apart from the rest of Beacon (`beacon run` starts each part in a session
    of its own, so the tree is followed, not a process group)."""
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used_s: dict[int, tuple[float, bool]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # past the command's name
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])  # ppid; utime and stime, in ticks, at 11 and 12
        used_s[pid] = ((int(fields[11]) + int(fields[12])) * tick_s, b"consume" in argv)
    used = {"collector": 0.0, "consumer": 0.0}
    for pid, (cpu_s, consumer) in used_s.items():
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parent:
            ancestor = parent[ancestor]
        if ancestor == root:
            used["consumer" if consumer else "collector"] += cpu_s
    return used


def children_cpu_s() -> float:
    """CPU seconds of this process's children that ended (wrk, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load(beacon: Beacon, opts: argparse.Namespace) -> dict[str, Any]:
    before, wrk_before = cpu_by_role(beacon.proc.pid), children_cpu_s()
    result = run_wrk(beacon.base, opts.connections, opts.duration_s, cpu=None)
    result["answered"] = result["requests"] - result["errors"]["status"]
    result["cpu_s"] = {"wrk": children_cpu_s() - wrk_before}
    result["cpu_before"] = before
    return result


def cpu_since(beacon: Beacon, result: dict[str, Any]) -> dict[str, float]:
    """CPU seconds by role from the load's start to now, and wrk's."""
    now = cpu_by_role(beacon.proc.pid)
    used = {role: now[role] - result["cpu_before"][role] for role in now}
    return {**used, **result["cpu_s"]}


def collector_alone(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    beacon = Beacon(["serve", "--sink", "memory"], workdir)
    try:
        beacon.wait_ready(store=False)
        result = load(beacon, opts)
        cpu_s = cpu_since(beacon, result)
    finally:
        beacon.stop()
    return {"answered": result["answered"], "rps": result["answered"] / opts.duration_s,
            "cpu_s": cpu_s}  # fmt: skip


def whole_box(opts: argparse.Namespace, workdir: Path, **env: str) -> dict[str, Any]:
    beacon = Beacon(["run"], workdir, **env)
    peak = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            peak[0] = max(peak[0], beacon.spool_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        beacon.wait_ready(store=True)
        sampler.start()
        result = load(beacon, opts)
        answered = result["answered"]
        load_ended = time.monotonic()
        stored, last_change, drain_s = beacon.stored(), time.monotonic(), None
        while time.monotonic() - last_change < DRAIN_STALL_S:
            now_stored = beacon.stored()
            if now_stored != stored:
                stored, last_change = now_stored, time.monotonic()
            if stored >= answered:
                drain_s = time.monotonic() - load_ended
                break
            time.sleep(0.25)
        cpu_s = cpu_since(beacon, result)
    finally:
        sampling.set()
        beacon.stop()
    sustained = stored / (opts.duration_s + drain_s) if drain_s is not None else None
    return {"answered": answered, "stored": stored, "drain_s": drain_s,
            "answered_rps": answered / opts.duration_s, "sustained_rps": sustained,
            "peak_spool_bytes": peak[0], "cpu_s": cpu_s}  # fmt: skip


def show_cpu(cpu_s: dict[str, float], answered: int, stored: int | None = None) -> None:
    """Where the CPU went: µs a pixel for the collector, µs an event for the consumer."""
    total_s = sum(cpu_s.values())
    parts = [f"collector {cpu_s['collector']:.1f} s ({cpu_s['collector'] / answered * 1e6:.1f} "
             "µs a pixel)"]  # fmt: skip
    if stored:
        share = cpu_s["consumer"] / total_s
        parts.append(f"consumer {cpu_s['consumer']:.1f} s ({cpu_s['consumer'] / stored * 1e6:.1f}"
                     f" µs an event, {share:.0%} of it)")  # fmt: skip
    parts.append(f"wrk {cpu_s['wrk']:.1f} s")
    print(f"  CPU {total_s:.1f} s: " + ", ".join(parts))


def show(name: str, box: dict[str, Any], alone: dict[str, Any]) -> None:
    drain = "never (stalled)" if box["drain_s"] is None else f"{box['drain_s']:.1f} s"
    print(f"{name}:")
    spool_mib = box["peak_spool_bytes"] / 2**20
    print(f"  answered {box['answered']:,} ({box['answered_rps']:,.0f}/s), stored "
          f"{box['stored']:,}, drained in {drain}, peak spool {spool_mib:,.1f} MiB")  # fmt: skip
    if box["sustained_rps"] is not None:
        ratio = box["sustained_rps"] / alone["rps"]
        box["ratio_to_collector_alone"] = ratio
        print(
            f"  sustained {box['sustained_rps']:,.0f} events/s = {ratio:.2f}x the collector alone"
        )
    show_cpu(box["cpu_s"], box["answered"], box["stored"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration-s", type=int, default=30)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="collector alone and beacon run, alternately (odd: the median is a round's own)",
    )
    p.add_argument("--kafka", action="store_true", help="also in Kafka mode (local broker)")
    opts = p.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="beacon-bench-e2e-"))
    broker = None
    document: dict[str, Any] = {"when": datetime.datetime.now(datetime.UTC).isoformat(),
                                "cpus": os.cpu_count(), "duration_s": opts.duration_s,
                                "connections": opts.connections}  # fmt: skip
    try:
        rounds = []
        for n in range(opts.rounds):  # alternately: drift on the shared machine falls on both
            alone = collector_alone(opts, workdir / f"alone-{n}")
            print(f"round {n + 1}: collector alone (beacon serve, memory sink): "
                  f"{alone['rps']:,.0f} pixels/s")  # fmt: skip
            show_cpu(alone["cpu_s"], alone["answered"])
            box = whole_box(opts, workdir / f"embedded-{n}")
            show(f"round {n + 1}: beacon run, embedded (spool -> chDB)", box, alone)
            # The whole box answering more than its collector alone: other work took the cores
            # in one of the two, and the round's ratio says more of the machine than of Beacon.
            disturbed = box["answered_rps"] > alone["rps"]
            if disturbed:
                print(f"  round {n + 1} disturbed: beacon run answered more than the collector "
                      "alone; run again on a quieter machine")  # fmt: skip
            rounds.append({"collector_alone": alone, "embedded": box, "disturbed": disturbed})
        document["rounds"] = rounds
        ratios = sorted(r["embedded"].get("ratio_to_collector_alone", 0.0) for r in rounds)
        document["median_ratio"] = (
            ratios[len(ratios) // 2]
            if len(ratios) % 2
            else (sum(ratios[len(ratios) // 2 - 1 : len(ratios) // 2 + 1]) / 2)
        )
        print(f"sustained / collector alone, median over {opts.rounds} rounds: "
              f"{document['median_ratio']:.2f}x (each: "
              f"{', '.join(f'{r:.2f}x' for r in ratios)})")  # fmt: skip
        if opts.kafka:
            broker = start_kafka(workdir)
            kafka_env = {"BEACON_KAFKA_BOOTSTRAP": broker.bootstrap}
            document["kafka"] = whole_box(opts, workdir / "kafka", **kafka_env)
            show("beacon run, Kafka mode (local broker)", document["kafka"], alone)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.datetime.now(datetime.UTC).date().isoformat()}-e2e.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    from loadtest.bench.report import bars

    rows = []
    for n, r in enumerate(document["rounds"], 1):
        box = r["embedded"]
        rows.append((f"round {n}: collector alone", r["collector_alone"]["rps"], "answered/s"))
        rows.append((f"round {n}: beacon run", box["answered_rps"], "answered/s"))
        if box["sustained_rps"] is not None:
            ratio = box["ratio_to_collector_alone"]
            rows.append((f"round {n}: beacon run, stored", box["sustained_rps"], f"{ratio:.2f}x"))
    if "kafka" in document and document["kafka"]["sustained_rps"] is not None:
        rows.append(("Kafka mode, stored", document["kafka"]["sustained_rps"], "sustained/s"))
    title = f"make bench-e2e: {opts.duration_s} s of wrk, then the drain; 2 cores shared"
    bars(out.with_suffix(".png"), title, "pixels (events) per second", rows)
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
