"""A consumer started before Kafka is there waits for it: one line a try, aiokafka's own
repeats throttled (contract/logs.py), no traceback, and a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60


def test_a_consumer_waits_for_an_unreachable_kafka_and_stops_cleanly(tmp_path: Path) -> None:
    log_path = tmp_path / "consume.log"
    env = {
        **os.environ,
        "BEACON_DATA_DIR": str(tmp_path / "data"),
        "BEACON_STORE_PORT": str(free_port()),
        "BEACON_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens there
        "BEACON_RETRY_MAX_MS": "1000",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "beacon", "consume"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while log_path.read_text().count("cannot be reached") < 3:
            assert proc.poll() is None, log_path.read_text()  # it waits, it does not exit
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "Traceback" not in text and "Unclosed" not in text, text
    # aiokafka logs its refused connection on every try: once a minute gets through.
    assert text.count("Unable connect to") == 1, text
    assert "consumer stopped" in text
