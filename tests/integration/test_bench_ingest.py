"""loadtest/bench_ingest follows the store step as it is: it names each statement of
consumers/ingest.Ingest by the tables it reads, so a change there must not leave a step
unmeasured; with --typed, the store step as typed rows would make it stores the same rows.
A small run, in its own process (chDB opens one data directory a process)."""

from __future__ import annotations

import re

from tests.support.helpers import run_module

ARGS = ("--events", "3000", "--batch-rows", "1000", "--typed")
STEPS = (
    "parse and checks into staging (JSONExtract)",
    "insert into beacon.events (join, views)",
    "lines in (LineAsString)",
    "distinct agents back",
    "enriched agents in",
    "counts and rejects back",
    "merges the inserts started",
)


def test_a_small_run_stores_every_event_on_both_sides_and_times_each_step() -> None:
    # The bench asserts that each side stored every event: a lost row fails the run.
    stdout = run_module("loadtest.bench_ingest", *ARGS)
    figures = dict(re.findall(r"^  (.+?) +(\d+\.\d\d)$", stdout, re.MULTILINE))
    for step in STEPS:
        assert step in figures, stdout
    # Each statement was told apart from the others: none fell into the catch-all step.
    assert float(figures["parse and checks into staging (JSONExtract)"]) > 0, stdout
    assert float(figures["insert into beacon.events (join, views)"]) > 0, stdout
    assert "3,000 events, 3 inserts of 1,000" in stdout
    assert "ratio to the storage limit" in stdout
    # The typed rows' pass: its own load step, and both ends for both ways of meeting the
    # events (the bench asserts that it stored the rows the lines' pass stored).
    typed = stdout.split("with typed rows on the wire", 1)[1]
    typed_figures = dict(re.findall(r"^  (.+?) +(\d+\.\d\d)$", typed, re.MULTILINE))
    assert float(typed_figures["typed rows in (ArrowStream)"]) > 0, typed
    assert "parse and checks into staging (JSONExtract)" not in typed_figures, typed
    assert (
        len(re.findall(r"JSON lines / typed rows, both ends +\d+\.\d\d / +\d+\.\d\d", typed)) == 2
    )
