"""loadtest/bench_merges stores a day of events once for each merge_selector_base it compares,
and prints what merging cost each. A small day, in its own process."""

from __future__ import annotations

import re

from tests.support.helpers import run_module


def test_a_small_day_is_stored_and_merged_once_per_base() -> None:
    stdout = run_module(
        "loadtest.bench_merges", "--events", "60000", "--batch-rows", "3000", "--bases", "2,10"
    )
    runs = re.findall(
        r"^merge_selector_base (\S+): 60,000 events in 20 inserts\n"
        r"  CPU µs an event +(\d+\.\d\d).*\n"
        r"  rows merged an event +(\d+\.\d\d) +\((\d+) merges\)\n"
        r"  parts left +events (\d+), rollup_events_hourly (\d+)\n",
        stdout,
        re.MULTILINE,
    )
    assert [r[0] for r in runs] == ["2", "10"], stdout
    (_, cpu2, merged2, merges2, _, _), (_, cpu10, merged10, _, _, _) = runs
    assert float(cpu2) > 0 and float(cpu10) > 0
    # Twenty parts of a day: two at a time merge each row several times, ten at a time less.
    assert int(merges2) > 0 and float(merged2) > float(merged10), stdout
