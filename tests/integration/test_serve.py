"""`beacon serve` as a process: graceful SIGTERM with drain, and the spool it leaves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from contract.segments import OPEN_SUFFIX, closed_segments
from tests.support.helpers import free_port


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sigterm_drains_then_flushes_everything_to_the_spool(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BEACON_DATA_DIR": str(tmp_path),
        "BEACON_PORT": str(port),
        "BEACON_DRAIN_MS": "3000",  # long next to one local request, even on a loaded machine
        "BEACON_LINGER_MS": "50",
        "BEACON_SPOOL_SEGMENT_MAX_BYTES": "4096",
    }
    proc = subprocess.Popen([sys.executable, "-m", "beacon", "serve"], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(base + "/readyz") == 200:
                    break
            except OSError:
                time.sleep(0.05)
        for i in range(300):
            assert get(f"{base}/p.gif?e=open&s=drain&r=r{i}") == 200
        proc.send_signal(signal.SIGTERM)
        # During the drain the process is not ready but still records what reaches it: pixels
        # go on until it stops listening, each answered one recorded, and some of them after
        # /readyz said 503. No count within the drain is expected, only that order.
        sent, answered, answered_not_ready = 300, set(range(300)), 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ready = get(base + "/readyz")
                sent += 1
                status = get(f"{base}/p.gif?e=open&s=drain&r=r{sent - 1}")
            except OSError:
                break  # no longer listening: the drain is over
            assert status == 200
            answered.add(sent - 1)
            answered_not_ready += ready == 503
            time.sleep(0.02)
        print(f"{answered_not_ready} pixels answered while not ready, {sent - 300} sent")
        assert answered_not_ready > 0, "no pixel answered after readiness went 503"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    spool = tmp_path / "spool"
    assert not list(spool.glob("*" + OPEN_SUFFIX))  # the last segment was closed on exit
    segments = closed_segments(spool)
    assert len(segments) > 1  # rotated by size on the way
    lines = [line for p in segments for line in p.read_bytes().splitlines()]
    recipients = sorted(int(orjson.loads(line)["recipient"][1:]) for line in lines)
    assert len(recipients) == len(set(recipients))  # none twice
    # Every answered pixel is kept; the last one sent may have landed unanswered as it closed.
    assert answered <= set(recipients) <= set(range(sent))
