"""`make loadtest`: locust headless for a bounded time, its CSV and HTML reports kept.

    python -m loadtest.locust_run [--users 300] [--spawn-rate 50] [--run-time 60s]
                                  [--host URL] [--out data/loadtest]

Without --host it starts a local `beacon run` (collector, consumer, embedded ClickHouse) in a
temporary data directory on free loopback ports, stops it after the run (every accepted event
is flushed and inserted on SIGTERM) and prints `beacon report` for what landed. With --host it
only sends traffic there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
STOP_GRACE_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seconds(run_time: str) -> int:
    """Locust's run-time syntax (90, 90s, 2m, 1h30m) in seconds."""
    total, number = 0, ""
    for char in run_time.strip():
        if char.isdigit():
            number += char
            continue
        total += int(number or 0) * {"h": 3600, "m": 60, "s": 1}[char]
        number = ""
    return total + int(number or 0)


class LocalBeacon:
    """`beacon run` on free loopback ports with a throwaway data directory."""

    def __init__(self, workdir: Path) -> None:
        self.port, store_port = free_port(), free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "beacon-run.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
            "BEACON_DATA_DIR": str(workdir / "data"),
            "BEACON_PORT": str(self.port),
            "BEACON_STORE_PORT": str(store_port),
            "BEACON_LOG_LEVEL": "WARNING",
        }
        cmd = [sys.executable, "-m", "beacon", "run"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"beacon run exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.host + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"beacon run did not get ready:\n{self.log_path.read_text()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def report(self) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "beacon", "report", "--days", "1"],
            env=self.env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        return done.stdout + done.stderr


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--spawn-rate", type=float, default=50)
    p.add_argument("--run-time", default="60s", help="locust syntax: 90s, 2m, ...")
    p.add_argument("--host", default="", help="a running collector; default: a local beacon run")
    p.add_argument("--out", type=Path, default=REPO / "data" / "loadtest")
    opts = p.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    prefix = opts.out / time.strftime("locust-%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="beacon-loadtest-"))
    local = None if opts.host else LocalBeacon(workdir)
    host = opts.host or (local.host if local else "")
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", str(opts.users), "--spawn-rate", str(opts.spawn_rate),
        "--run-time", opts.run_time, "--stop-timeout", "10", "--host", host,
        "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary",
    ]  # fmt: skip
    print(f"locust: {opts.users} users for {opts.run_time} against {host}", flush=True)
    try:
        done = subprocess.run(cmd, cwd=REPO, timeout=seconds(opts.run_time) + 120, check=False)
    finally:
        if local is not None:
            code = local.stop()
            print(f"beacon run stopped ({code}); what reached the store:")
            print(local.report())
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"reports: {prefix}_stats.csv, {prefix}_stats_history.csv, {prefix}.html")
    # Locust exits 1 when any request failed: that is the verdict of the load test.
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
