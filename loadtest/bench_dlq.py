"""The dead-letter step: a batch whose every line is bad, through `consumers/dlq.py`.

    python -m loadtest.bench_dlq [--rejects 60000] [--rounds 3]

On a broker of its own, sends `--rejects` bench-sized lines (~550 bytes, as a collector's
release ahead of the consumers would make them all `unknown_schema_version`) to a fresh
dead-letter topic with DeadLetters.send, and waits for every acknowledgement, as the consumer
does before it commits such a batch. Rounds alternate the producer's batch bound: aiokafka's
default (16 KiB) and DeadLetters' own. Prints dead letters a second (wall) and CPU µs each.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumers.dlq import BATCH_MAX_BYTES, DeadLetters
from loadtest.bench.system import free_port
from loadtest.bench_consumer import cpu_seconds

BOUNDS = {"16 KiB batches (aiokafka's default)": 16 * 1024, "DeadLetters' batches": BATCH_MAX_BYTES}
LINE = b'{"schema_version":99,"x":"' + b"y" * 520 + b'"}'


async def one_round(bootstrap: str, rejects: int, batch_max_bytes: int) -> tuple[float, float]:
    """(wall s, CPU s) of one DeadLetters.send of `rejects` lines, to a topic of its own."""
    source = ConsumerRecord("beacon.events", 0, 0, 0, 0, None, b"", None, 0, 0, ())
    lines = [(source, n, LINE, "unknown_schema_version") for n in range(rejects)]
    topic = f"bench.dlq.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])  # as the consumer's ensure_topic
    finally:
        await admin.close()
    dead = DeadLetters(bootstrap, topic, batch_max_bytes)
    await dead.start()
    try:
        await dead.send(lines[:1])  # its leader known: not timed
        started_s, started_cpu_s = time.perf_counter(), cpu_seconds()
        await dead.send(lines)
        return time.perf_counter() - started_s, cpu_seconds() - started_cpu_s
    finally:
        await dead.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rejects", type=int, default=60_000)
    p.add_argument("--rounds", type=int, default=3)
    opts = p.parse_args()
    from loadtest.bench.__main__ import load_kafka_script

    workdir = Path(tempfile.mkdtemp(prefix="beacon-bench-dlq-"))
    broker = load_kafka_script().start_broker(workdir / "kafka", free_port(), free_port())
    try:
        print(f"{opts.rejects:,} dead letters of {len(LINE)} bytes a round, acks=all", flush=True)
        for round_no in range(opts.rounds):
            for label, bound in BOUNDS.items():
                wall_s, cpu_s = asyncio.run(one_round(broker.bootstrap, opts.rejects, bound))
                print(f"  round {round_no + 1}, {label:36s} {opts.rejects / wall_s:9,.0f} a second"
                      f"  {cpu_s * 1e6 / opts.rejects:6.2f} CPU µs each", flush=True)  # fmt: skip
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
