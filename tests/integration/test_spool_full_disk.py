"""The disk spool on a disk that fills (BEACON_DURABILITY=memory): a write that stops part way
is cut back to its last whole line, so a closed segment never holds a torn line; the events
counted as spooled are exactly the lines on disk and the rest are counted as lost
(`spool_error`); readiness fails meanwhile and comes back once the disk takes a write again.

The short write is real: a child process whose files may not pass RLIMIT_FSIZE bytes, so the
write that crosses it is cut short by the kernel and the next one fails (EFBIG), as ENOSPC does
on a full disk. SIGXFSZ is ignored, as `beacon serve` does, so the failure comes back as errors.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from contract.segments import OPEN_SUFFIX, closed_segments

LIMIT_BYTES = 10_000
BATCHES = 10
PER_BATCH = 7
FULL_DISK_SCRIPT = """
import asyncio, json, resource, signal, sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from collector.metrics import CollectorMetrics
from collector.sinks.spool import SpoolSink

LIMIT_BYTES, BATCHES, PER_BATCH = (int(x) for x in sys.argv[2:5])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
metrics = CollectorMetrics(CollectorRegistry())
sample = metrics.registry.get_sample_value


def batch(first):
    return [b'{"n":%d,"pad":"%s"}' % (n, b"x" * 300) for n in range(first, first + PER_BATCH)]


async def main():
    sink = SpoolSink(Path(sys.argv[1]), metrics, segment_max_bytes=1 << 30,
                     segment_max_age_ms=3_600_000, segment_idle_ms=3_600_000,
                     max_bytes=1 << 30)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, resource.RLIM_INFINITY))
    for i in range(BATCHES):  # the disk fills part way through one of them
        await sink.send(batch(i * PER_BATCH))
    full = sink.healthy()
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    await sink.flush()  # no event: it finds out by itself that the disk takes writes again
    recovered = sink.healthy()
    # Into the same segment, after its last whole line.
    await sink.send(batch(BATCHES * PER_BATCH))
    await sink.close()
    print(json.dumps({
        "spooled": sample("beacon_sink_events_total", {"outcome": "spooled"}),
        "errors": sample("beacon_events_dropped_total", {"reason": "spool_error"}),
        "healthy_when_full": full,
        "healthy_after": recovered,
    }))


asyncio.run(main())
"""


def test_a_short_write_leaves_whole_lines_and_the_counters_match_the_disk(tmp_path: Path):
    spool_dir = tmp_path / "spool"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            FULL_DISK_SCRIPT,
            str(spool_dir),
            *map(str, (LIMIT_BYTES, BATCHES, PER_BATCH)),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    result = orjson.loads(run.stdout)
    assert not result["healthy_when_full"] and result["healthy_after"]
    assert list(spool_dir.glob("*" + OPEN_SUFFIX)) == []
    [segment] = closed_segments(spool_dir)
    data = segment.read_bytes()
    assert data.endswith(b"\n")
    numbers = [orjson.loads(line)["n"] for line in data.splitlines()]  # every line parses
    sent = (BATCHES + 1) * PER_BATCH
    # Whole events in order up to where the disk filled, then the batch sent after it freed.
    kept = len(numbers) - PER_BATCH
    assert 0 < kept < BATCHES * PER_BATCH
    assert kept % PER_BATCH != 0  # the disk filled inside a batch: a real short write
    assert numbers == [*range(kept), *range(BATCHES * PER_BATCH, sent)]
    assert result["spooled"] == len(numbers)
    assert result["spooled"] + result["errors"] == sent
