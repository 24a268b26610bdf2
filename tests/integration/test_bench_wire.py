"""loadtest/bench_wire times every format it names, and --write-lines hands a reader outside
Python (loadtest/parse_rs) the very lines of the run. A small run, in its own process."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from loadtest.bench_enrich import wire_lines
from loadtest.bench_wire import FORMATS
from tests.support.helpers import run_module


def test_a_small_run_times_each_format_and_writes_its_lines(tmp_path: Path) -> None:
    lines = tmp_path / "lines.ndjson"
    stdout = run_module(
        "loadtest.bench_wire", "--events", "2000", "--rounds", "1", "--write-lines", str(lines)
    )
    figures = dict(re.findall(r"^  (\S.+?) +(\d+\.\d\d)$", stdout, re.MULTILINE))
    for name in FORMATS:
        timed = [label for label in figures if label.startswith(f"{name} (")]
        assert timed and float(figures[timed[0]]) > 0, stdout
    assert float(figures["the lines + JSONExtract + checks (today)"]) > 0, stdout
    # The run's events: the same mix (its ids and times are the moment's).
    written = lines.read_bytes().splitlines()
    assert list(map(_fields, written)) == list(map(_fields, wire_lines(2000, 3_000)))


def _fields(line: bytes) -> dict[str, object]:
    event = orjson.loads(line)
    return {k: v for k, v in event.items() if k not in ("event_id", "received_at")}
