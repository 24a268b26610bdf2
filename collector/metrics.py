"""The collector's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from itertools import product
from pathlib import Path

from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from collector import event as ev
from collector import json_event, signing
from collector.destinations import REFUSALS
from collector.request_view import PURPOSES
from collector.sanitize import BIDI_NOTE, NOTE, SURROGATE_NOTE
from collector.tallies import CounterTally, Tallies
from contract.event import NETWORKS

# The hot path is answered from memory: its budget is tens of microseconds, so the buckets are too,
# and close together around the 50 us p99 budget: histogram_quantile() interpolates inside a
# bucket, and with 50 and 100 only it could not tell a p99 of 51 us from one of 99.
HOT_PATH_BUCKETS_S = (
    5e-6, 10e-6, 15e-6, 20e-6, 25e-6, 30e-6, 40e-6, 50e-6, 60e-6, 75e-6, 100e-6, 150e-6, 200e-6,
    500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3,
)  # fmt: skip
# A produce round trip on loopback is ~1 ms; past the 5 s default timeout a batch is spilled.
PRODUCE_BUCKETS_S = (1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10)
BATCH_RECORDS_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10_000, 50_000)

_CAMEL_RE = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def class_label(cls: type) -> str:
    """A bounded label from an exception class: LineTooLong -> line_too_long."""
    return _CAMEL_RE.sub("_", cls.__name__).lower()


def reason_of(exc: BaseException) -> str:
    """The label of the HTTP parser's exception (collector/limits.py counts them)."""
    return class_label(type(exc))


def _subclasses(cls: type[BaseException]) -> Iterable[type[BaseException]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _subclasses(sub)


# -- every label value the code can emit, per labelled counter --------------------------------
# Each child is made at 0 with the metrics: a child made at its first increment appears at 1 (or
# at a whole burst), and rate() and increase() never see that step, so an alert on a rare event
# would miss it. Dynamic sets are kept beside the code that makes them (collector/event.py,
# json_event.py, signing.py, destinations.py); tests/unit/test_metric_labels.py checks that every
# label the code emits is in here.
# A pixel or click answered while its event was refused on its way to the sink
# (collector/buffer.py, collector/spool/wal.py): the reason it was dropped.
BUFFER_REFUSALS = ("buffer_full", "spool_full", "spool_error", "shutdown")
PIXEL_OUTCOMES = ("recorded", "rejected", "unverified", "head", "dnt", "no_consent",
                  *BUFFER_REFUSALS, "rate_limited", "error")  # fmt: skip
EVENTS_OUTCOMES = ("recorded", "400", "413", "415", "429", "503")  # POST /e: 204 or the status
CLICK_OUTCOMES = ("recorded", "rejected", "refused", "head", "dnt", "no_consent",
                  *BUFFER_REFUSALS)  # fmt: skip
REQUEST_OUTCOMES: dict[str, tuple[str, ...]] = {
    "pixel": PIXEL_OUTCOMES,
    "events": EVENTS_OUTCOMES,
    "click": CLICK_OUTCOMES,
    "snippet": ("served", "not_modified"),  # GET /t.js
    "ad_tag": ("served", "not_modified"),  # GET /a.js
    "unrouted": ("404", "405"),
    "metrics": ("unreadable",),
}
TRANSPORTS = ("pixel", "beacon", "redirect")
# An accepted event's invalid-traffic flags: its address's network, its request's purpose.
FLAGS = (*NETWORKS, *PURPOSES)
# Accepted events lost on their way to the sink: the reasons deploy/prometheus/alerts.yml pages on.
LOSS_REASONS = ("buffer_full", "spool_full", "spool_error", "sink_error", "shutdown", "too_large")
DROP_REASONS = tuple(dict.fromkeys((
    *LOSS_REASONS,
    "memory_sink_discarded",  # the memory sink of tests and benchmarks lets its oldest go
    "dnt", "no_consent",  # privacy choices (collector/handlers.py)
    signing.UNSIGNED, signing.BAD_SIGNATURE,  # pixels under BEACON_SIGNATURE_POLICY=drop
    *ev.REJECT_REASONS, *json_event.REJECT_REASONS,  # input that cannot become an event
)))  # fmt: skip
FIX_REASONS = (*ev.NOTES, "bad_consent", "bad_visitor_cookie", NOTE, BIDI_NOTE, SURROGATE_NOTE,
               "bad_forwarded_header")  # fmt: skip
SIGNED_ENDPOINTS = ("pixel", "click")
CLICK_REFUSALS = ("signing_disabled", *(o for o in signing.OUTCOMES if o != signing.VALID),
                  *REFUSALS)  # fmt: skip
# What aiohttp's HTTP parser raises (collector/limits.py counts each by its class), and a body
# that breaks while it is read.
PARSER_ERRORS = tuple(sorted({class_label(c) for c in _subclasses(HttpProcessingError)}))
BAD_REQUEST_REASONS = ("malformed_body", *PARSER_ERRORS)


class CollectorMetrics:
    """Every series a collector process exports."""

    def __init__(
        self, registry: CollectorRegistry, multiprocess_dir: Path | None = None, kafka: bool = True
    ) -> None:
        """`kafka`: the sink sends to Kafka (Settings.uses_kafka); else beacon_kafka_up is not
        made."""
        self.registry = registry
        # Tallies of the hot path's series (collector/tallies.py), added in by fold().
        self.folds: list[Callable[[], None]] = []
        # What /metrics shows: this process's series, or with several workers (PROMETHEUS_
        # MULTIPROC_DIR set before prometheus_client was imported) the sum over all of them.
        # Gauges say how to combine in `multiprocess_mode`; it is ignored in one process.
        self.exposition = registry
        if multiprocess_dir is not None:
            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition, path=str(multiprocess_dir))
        self.requests = Counter(
            "beacon_requests",
            "HTTP requests by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.hot_path_seconds = Histogram(
            "beacon_hot_path_seconds",
            "Time from handler entry to response ready, per endpoint.",
            ["endpoint"],
            buckets=HOT_PATH_BUCKETS_S,
            registry=registry,
        )
        self.events_accepted = Counter(
            "beacon_events_accepted",
            "Events accepted into the buffer, by transport.",
            ["transport"],
            registry=registry,
        )
        self.events_dropped = Counter(
            "beacon_events_dropped",
            "Events not stored, by reason (junk, privacy, full buffer or spool).",
            ["reason"],
            registry=registry,
        )
        self.events_flagged = Counter(
            "beacon_events_flagged",
            "Events accepted into the buffer with an invalid-traffic flag, by flag: the"
            " network of the client's address (data_center, crawler) or the purpose of a"
            " speculative request (prefetch, prerender, preview); one with both counts in both.",
            ["flag"],
            registry=registry,
        )
        self.input_fixed = Counter(
            "beacon_input_fixed",
            "Accepted events whose input was cut to fit a limit, by reason.",
            ["reason"],
            registry=registry,
        )
        self.buffer_events = Gauge(
            "beacon_buffer_events",
            "Events waiting in memory for the sink.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.sink_events = Counter(
            "beacon_sink_events",
            "Events handed to the sink, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "beacon_spool_bytes",
            "Bytes in spool segments on disk.",
            multiprocess_mode="livemax",  # every worker sees the whole shared directory
            registry=registry,
        )
        self.spool_segments = Gauge(
            "beacon_spool_segments",
            "Spool segment files on disk.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.spool_max_bytes = Gauge(
            "beacon_spool_max_bytes",
            "The spool's bound (BEACON_SPOOL_MAX_BYTES): past it, events are dropped.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.kafka_produce_seconds = Histogram(
            "beacon_kafka_produce_seconds",
            "Time from handing a record batch to the producer to the broker's ack (acks=all).",
            buckets=PRODUCE_BUCKETS_S,
            registry=registry,
        )
        self.kafka_batch_records = Histogram(
            "beacon_kafka_batch_records",
            "Events per record batch produced to Kafka (live and replayed).",
            buckets=BATCH_RECORDS_BUCKETS,
            registry=registry,
        )
        self.kafka_events = Counter(
            "beacon_kafka_events",
            "Events produced to Kafka, by outcome (acked, failed, timeout, too_large).",
            ["outcome"],
            registry=registry,
        )
        self.kafka_spilled = Counter(
            "beacon_kafka_spilled_events",
            "Events written to the disk spool instead of Kafka, by reason.",
            ["reason"],
            registry=registry,
        )
        self.kafka_replayed = Counter(
            "beacon_kafka_replayed_events",
            "Spooled events sent to Kafka and acknowledged (their segment is then deleted).",
            registry=registry,
        )
        # Only where the sink sends to Kafka: a spool or memory collector's 0 would fire
        # BeaconKafkaUnreachable at every scrape. Not made at all, rather than left out of the
        # registry, because with several workers a gauge is in the shared files once made.
        self.kafka_up = (
            Gauge(
                "beacon_kafka_up",
                "1 while the Kafka producer reaches the broker.",
                multiprocess_mode="livemin",  # 0 while any worker's producer does not
                registry=registry,
            )
            if kafka
            else None
        )
        self.kafka_queue_bytes = Gauge(
            "beacon_kafka_queue_bytes",
            "Event bytes queued for or in flight to Kafka, not yet acknowledged.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.workers = Gauge(
            "beacon_workers",
            "Collector worker processes serving (1 per process, summed over live workers).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.worker_starts = Counter(
            "beacon_worker_starts",
            "Collector worker processes started (beyond the worker count: restarts).",
            registry=registry,
        )

        # -- signed URLs and click redirects (collector/signing.py, collector/redirect.py) --
        self.signature_checks = Counter(
            "beacon_signature_checks",
            "URL signature checks by endpoint and outcome (valid, unsigned, bad_signature, ...).",
            ["endpoint", "outcome"],
            registry=registry,
        )
        # Every pixel is checked when keys are set: tallied (collector/signing.py's gate).
        self.signature_tallies = Tallies(self.signature_checks, CounterTally)
        self.folds.append(self.signature_tallies.fold)
        self.click_redirects = Counter(
            "beacon_click_redirects",
            "Click requests by outcome: redirected, or refused (400 page or fallback URL).",
            ["outcome"],
            registry=registry,
        )
        self.click_refused = Counter(
            "beacon_click_refused",
            "Click redirects refused, by reason (signature, destination check).",
            ["reason"],
            registry=registry,
        )

        # -- write-ahead log --
        self.wal_events = Counter(
            "beacon_wal_events",
            "Events written to the write-ahead log (BEACON_DURABILITY=wal) before their answer.",
            registry=registry,
        )
        self.wal_writes = Counter(
            "beacon_wal_writes",
            "Writes of the write-ahead log: events / writes is how many a write carries.",
            registry=registry,
        )
        self.wal_segments = Counter(
            "beacon_wal_segments",
            "Write-ahead log segments closed (then replayed to Kafka or read by the consumer).",
            registry=registry,
        )

        # -- limits --
        self.bad_requests = Counter(
            "beacon_bad_requests",
            "Requests refused by the HTTP parser with a 400, by reason (line_too_long, ...).",
            ["reason"],
            registry=registry,
        )
        self.connections_timed_out = Counter(
            "beacon_connections_timed_out",
            "Connections closed because a request head or body came too slowly, by phase.",
            ["phase"],
            registry=registry,
        )
        self.connections_capped = Counter(
            "beacon_connections_capped",
            "Connections closed by the per-worker connection cap (BEACON_MAX_CONNECTIONS): an"
            " idle one closed to make room for a new one (closed_idle), or a new one closed at"
            " once because none was idle (refused).",
            ["action"],
            registry=registry,
        )
        self.connections_open = Gauge(
            "beacon_connections_open",
            "Client connections open (summed over live workers).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.connections_max = Gauge(
            "beacon_connections_max",
            "The connection cap (summed over live workers): at it, idle connections make room.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.fast_path_handoffs = Counter(
            "beacon_fast_path_handoffs",
            "Connections the pixel fast path handed to aiohttp, by what it met: another"
            " request, a health check or scrape (probe), or a pixel head whose rest did not come"
            " within the header deadline.",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "beacon_rate_limited",
            "Requests over the per-IP rate limit (pixels: served, not recorded), by endpoint.",
            ["endpoint"],
            registry=registry,
        )

        self._zero()

    def _zero(self) -> None:
        """Make every child the code can emit, at 0 (the label values above)."""
        labelled: tuple[tuple[Counter, Iterable[tuple[str, ...] | str]], ...] = (
            (self.requests, ((e, o) for e, outcomes in REQUEST_OUTCOMES.items() for o in outcomes)),
            (self.events_accepted, TRANSPORTS),
            (self.events_dropped, DROP_REASONS),
            (self.events_flagged, FLAGS),
            (self.input_fixed, FIX_REASONS),
            (self.sink_events, ("spooled",)),
            (self.kafka_events, ("acked", "failed", "timeout", "too_large")),
            (self.kafka_spilled, ("kafka_down", "queue_full", "timeout", "too_large")),
            (self.signature_checks, product(SIGNED_ENDPOINTS, signing.OUTCOMES)),
            (self.click_redirects, ("redirected", "fallback", "refused")),
            (self.click_refused, CLICK_REFUSALS),
            (self.bad_requests, BAD_REQUEST_REASONS),
            (self.connections_timed_out, ("header", "body")),
            (self.connections_capped, ("closed_idle", "refused")),
            (self.fast_path_handoffs, ("other_request", "probe", "split_head")),
            (self.rate_limited, ("pixel", "events")),
        )
        for counter, values in labelled:
            for value in values:
                counter.labels(*(value if isinstance(value, tuple) else (value,)))

    def fold(self) -> None:
        """Add what the hot path tallied into the series (each buffer tick, each /metrics)."""
        for fold in self.folds:
            fold()
