"""The disk spool on a disk that fills (BEACON_DURABILITY=memory): a write that stops part way
is cut back to its last whole line, so a closed segment never holds a torn line; the events
counted as spooled are exactly the lines on disk and the rest are counted as lost
(`spool_error`); readiness fails meanwhile and comes back once the disk takes a write again.

The short write is real: a child process whose files may not pass RLIMIT_FSIZE bytes, so the
write that crosses it is cut short by the kernel and the next one fails (EFBIG), as ENOSPC does
on a full disk. SIGXFSZ is ignored, as `beacon serve` does, so the failure comes back as errors.
A segment at the file size limit is closed at once and the rest of the write goes into a new
one; a limit of one byte fails every write, as a full disk does.
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
UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
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
    for i in range(BATCHES):  # files reach their limit part way through some of them
        await sink.send(batch(i * PER_BATCH))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))  # the disk full
    await sink.send(batch(BATCHES * PER_BATCH))
    full = sink.healthy()
    resource.setrlimit(resource.RLIMIT_FSIZE, UNLIMITED)
    await sink.flush()  # no event: it finds out by itself that the disk takes writes again
    recovered = sink.healthy()
    await sink.send(batch((BATCHES + 1) * PER_BATCH))
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
    segments = [path.read_bytes() for path in closed_segments(spool_dir)]
    assert all(data.endswith(b"\n") for data in segments)  # whole lines only
    numbers = [orjson.loads(line)["n"] for data in segments for line in data.splitlines()]
    sent = (BATCHES + 2) * PER_BATCH
    # A batch that reached a file's limit kept its whole lines before it, and the file was
    # closed and the rest written into a new one: every event once, in order (before, the
    # rest was lost and every later write failed until the file closed at its age). The full
    # disk's batch was lost; the one after it was kept.
    assert len(segments) >= 3
    full_disk = range(BATCHES * PER_BATCH, (BATCHES + 1) * PER_BATCH)
    assert numbers == [n for n in range(sent) if n not in full_disk]
    assert result["spooled"] == len(numbers)
    assert result["errors"] == PER_BATCH
