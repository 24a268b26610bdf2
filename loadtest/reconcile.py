"""After a load test: what the store holds of it, beside what each request should have left.

The store is read through its query port (`POST /query`, as `beacon report` reads it),
counting only this run's rows (`props['loadtest']`), until the counts reach what the ledger
expects or stop changing. The collector's own counters (/metrics) say the same from the other
side: events accepted by transport, and events dropped by reason.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
from prometheus_client.parser import text_string_to_metric_families

from loadtest.ledger import Row, totals

TRANSPORT_OF_PREFIX = {"GET /p.gif": "pixel", "POST /e": "beacon", "GET /c": "redirect"}
POLL_S = 1.0


@dataclass
class Stored:
    by_type: Counter[str] = field(default_factory=Counter)
    by_transport: Counter[str] = field(default_factory=Counter)
    waited_s: float = 0.0
    how: str = ""  # why the wait ended


def store_query(store_url: str, sql: str, timeout_s: float = 60) -> str:
    body = orjson.dumps({"sql": sql, "format": "TSV"})
    request = urllib.request.Request(
        f"{store_url.rstrip('/')}/query", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as r:
        return str(r.read().decode())


def read_stored(store_url: str, run_tag: str) -> Stored:
    # The tag is ours (hex): safe inside the literal. FINAL: a replayed event counts once.
    sql = (
        "SELECT event_type, transport, count() FROM beacon.events FINAL "
        f"WHERE props['loadtest'] = '{run_tag}' GROUP BY event_type, transport"
    )
    stored = Stored()
    for line in store_query(store_url, sql).splitlines():
        event_type, transport, count = line.split("\t")
        stored.by_type[event_type] += int(count)
        stored.by_transport[transport] += int(count)
    return stored


def caught_up(stored: Counter[str], expected: Counter[str], maybe: Counter[str]) -> bool:
    kinds = set(stored) | set(expected) | set(maybe)
    return all(expected[k] <= stored[k] <= expected[k] + maybe[k] for k in kinds)


def wait_for_store(
    read: Callable[[], Stored],
    expected: Counter[str],
    maybe: Counter[str],
    settle_s: float,
    deadline_s: float,
    accepted_total: int | None = None,
) -> Stored:
    """Poll until the counts equal what is expected (nothing uncertain) or, with uncertain
    events, what the collector says it accepted; or until they have not changed for
    `settle_s` (something is missing), or the deadline passes."""
    started = time.monotonic()
    stored, unchanged_since = Stored(), started
    while True:
        last = stored
        try:
            stored = read()
        except OSError:  # the store busy or restarting: no news this time
            stored = Stored(last.by_type.copy(), last.by_transport.copy())
        now = time.monotonic()
        stored.waited_s = now - started
        if stored.by_type != last.by_type:
            unchanged_since = now
        if not maybe and stored.by_type == +expected:
            stored.how = "equal to what was expected"
            return stored
        total = stored.by_type.total()
        if total == accepted_total and caught_up(stored.by_type, expected, maybe):
            stored.how = "equal to what the collector accepted"
            return stored
        if now - unchanged_since >= settle_s:
            stored.how = f"unchanged for {settle_s:.0f} s"
            return stored
        if now - started >= deadline_s:
            stored.how = f"deadline of {deadline_s:.0f} s passed, still changing"
            return stored
        time.sleep(POLL_S)


def collector_counters(base_url: str) -> dict[str, dict[str, float]]:
    """Accepted events by transport and dropped events by reason, from /metrics."""
    with urllib.request.urlopen(f"{base_url.rstrip('/')}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {"accepted": {}, "dropped": {}}
    wanted = {"beacon_events_accepted": ("accepted", "transport"),
              "beacon_events_dropped": ("dropped", "reason")}  # fmt: skip
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        key, label = wanted[family.name]
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                out[key][sample.labels[label]] = sample.value
    return out


def settled_counters(base_url: str, tries: int = 20) -> dict[str, dict[str, float]]:
    """The counters once two reads agree: each worker folds its hot-path tallies in every
    BEACON_LINGER_MS, so another worker's last requests show up a tick later."""
    last = collector_counters(base_url)
    for _ in range(tries):
        time.sleep(0.5)
        now = collector_counters(base_url)
        if now == last:
            break
        last = now
    return last


def expected_by_transport(rows: Mapping[str, Row]) -> Counter[str]:
    out: Counter[str] = Counter()
    for label, row in rows.items():
        for prefix, transport in TRANSPORT_OF_PREFIX.items():
            if label.startswith(prefix):
                out[transport] += row.expected.total()
    return +out


def arithmetic(rows: Mapping[str, Row]) -> dict[str, int]:
    """Requests to events, term by term: why N requests are not N events."""
    requests = sum(row.started for row in rows.values())
    not_events = sum(row.started for row in rows.values() if not row.sent)
    extra = sum(row.sent.total() - row.started for row in rows.values() if row.sent)
    sent, expected, maybe, refused = (
        totals(rows, name).total() for name in ("sent", "expected", "maybe", "refused")
    )
    return {
        "requests": requests,
        "not_events": not_events,
        "extra_in_batches": extra,
        "sent": sent,
        "dropped_by_design": sent - expected - maybe - refused,
        "refused": refused,
        "uncertain": maybe,
        "expected": expected,
    }
