"""loadtest/bench_kafka_read reads both topics whole with both clients (a read that misses a
record never ends, and the run fails) and reports a figure for each. A small run, in its own
process, against a broker of its own."""

from __future__ import annotations

import json
import re
from pathlib import Path

from loadtest.bench_kafka_read import CLIENTS
from tests.support.helpers import run_module


def test_a_small_run_reads_both_topics_with_both_clients(tmp_path: Path) -> None:
    figures = tmp_path / "kafka-read.json"
    stdout = run_module(
        "loadtest.bench_kafka_read", "--events", "20000", "--rounds", "2", "--json", str(figures)
    )
    timed = re.findall(r"^  round (\d), (.+?) +(\S+) +(\d+\.\d{3})$", stdout, re.MULTILINE)
    # Two rounds x two topics x each client, each with CPU time to show.
    assert len(timed) == 2 * 2 * len(CLIENTS) and all(float(us) > 0 for *_, us in timed), stdout
    written = json.loads(figures.read_text())["us_per_event"]
    assert set(written) == {"65536 B records", "an event a record"}
    for by_client in written.values():
        assert set(by_client) == set(CLIENTS) and all(len(v) == 2 for v in by_client.values())
