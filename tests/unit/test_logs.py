"""contract/logs.py: a library's repeated lines at most once an interval, Beacon's untouched."""

from __future__ import annotations

import logging

from contract.logs import Throttle, ThrottledLibraries


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


def test_a_librarys_repeats_pass_once_an_interval_and_beacons_lines_always() -> None:
    now = [0.0]
    handler = Kept()
    handler.addFilter(ThrottledLibraries(("aiokafka",), Throttle(60, clock=lambda: now[0])))
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    ours = logging.getLogger("beacon.test-logs")
    for logger in (coordinator, ours):
        logger.addHandler(handler)
        logger.propagate = False
    try:
        for attempt in range(100):  # a broker away: a line per node and attempt
            now[0] = attempt * 0.5
            coordinator.error("Unable connect to node with id %s: %s", attempt % 3, "refused")
            ours.warning("kafka unreachable (%d)", attempt)
        coordinator.warning("Heartbeat failed for group %s", "g")  # another message passes
        now[0] = 61.0
        coordinator.error("Unable connect to node with id %s: %s", 1, "refused")
    finally:
        for logger in (coordinator, ours):
            logger.removeHandler(handler)
            logger.propagate = True
    kafka = [line for line in handler.lines if line.startswith("aiokafka")]
    assert kafka == [
        "aiokafka.consumer.group_coordinator Unable connect to node with id 0: refused",
        "aiokafka.consumer.group_coordinator Heartbeat failed for group g",
        "aiokafka.consumer.group_coordinator Unable connect to node with id 1: refused"
        " (and 99 more like it since the last line)",
    ]
    assert len(handler.lines) - len(kafka) == 100  # every one of Beacon's own lines
