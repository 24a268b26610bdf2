"""Hot-path tallies (collector/tallies.py) add up to what direct metric updates would show."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from collector.metrics import HOT_PATH_BUCKETS_S
from collector.tallies import CounterTally, HistogramTally, Tallies

# Below, on and just above each bound (observe() counts `value <= bound`), and past the last.
VALUES = [b * f for b in HOT_PATH_BUCKETS_S for f in (0.5, 1.0, 1.000001)] + [0.0, 12.0, 1e9]


def pair(
    name: str,
) -> tuple[Counter, Histogram, Counter, Histogram, CollectorRegistry, CollectorRegistry]:
    """The same counter and histogram in two registries: one updated directly, one tallied."""
    made = []
    for registry in (CollectorRegistry(), CollectorRegistry()):
        counter = Counter(f"{name}_requests", "r", ["outcome"], registry=registry)
        histogram = Histogram(
            f"{name}_seconds", "s", ["endpoint"], buckets=HOT_PATH_BUCKETS_S, registry=registry
        )
        made.append((counter, histogram, registry))
    (c1, h1, r1), (c2, h2, r2) = made
    return c1, h1, c2, h2, r1, r2


def exposed(registry: CollectorRegistry) -> tuple[list[bytes], list[float]]:
    """The exposition without the creation times, which differ between the two registries,
    and the histogram sums apart: added in another order, they may differ in the last bit."""
    lines, sums = [], []
    for line in generate_latest(registry).splitlines():
        if b"_seconds_sum" in line:
            sums.append(float(line.rsplit(b" ", 1)[1]))
        elif b"_created" not in line:
            lines.append(line)
    return lines, sums


def test_folded_tallies_expose_what_direct_updates_expose() -> None:
    direct_counter, direct_histogram, counter, histogram, direct, tallied = pair("t")
    counts = Tallies(counter, CounterTally)
    times = Tallies(histogram, HistogramTally)
    for round_ in range(2):  # a second fold adds to the first
        for i, value in enumerate(VALUES):
            outcome = "recorded" if i % 3 else "dnt"
            direct_counter.labels(outcome).inc()
            direct_histogram.labels("pixel").observe(value)
            counts[outcome].inc()
            times["pixel"].observe(value)
        if round_ == 0:
            assert b't_requests_total{outcome="dnt"} 0.0' in generate_latest(tallied)  # not yet
        counts.fold()
        times.fold()
        tallied_lines, tallied_sums = exposed(tallied)
        direct_lines, direct_sums = exposed(direct)
        assert tallied_lines == direct_lines
        assert tallied_sums == pytest.approx(direct_sums, rel=1e-12)


def test_a_fold_without_new_counts_changes_nothing() -> None:
    _, _, counter, histogram, _, tallied = pair("u")
    counts = Tallies(counter, CounterTally)
    times = Tallies(histogram, HistogramTally)
    counts["recorded"].inc()
    times["pixel"].observe(0.00003)
    counts.fold()
    times.fold()
    before = generate_latest(tallied)
    counts.fold()
    times.fold()
    assert generate_latest(tallied) == before
    assert b'u_seconds_bucket{endpoint="pixel",le="5e-05"} 1.0' in before
