"""loadtest/bench_dlq sends its dead letters with both batch bounds and prints a figure for
each round (a send short of any acknowledgement never returns, and the run fails). A small
run, in its own process, against a broker of its own."""

from __future__ import annotations

import re

from loadtest.bench_dlq import BOUNDS
from tests.support.helpers import run_module


def test_a_small_run_sends_with_both_bounds_and_prints_each_round() -> None:
    stdout = run_module("loadtest.bench_dlq", "--rejects", "3000", "--rounds", "2")
    rounds = re.findall(r"^  round (\d), (.+?) +([\d,]+) a second +(\d+\.\d\d) CPU", stdout, re.M)
    assert [(n, label) for n, label, *_ in rounds] == [
        (str(n), label) for n in (1, 2) for label in BOUNDS
    ], stdout
    assert all(int(rate.replace(",", "")) > 0 and float(us) > 0 for *_, rate, us in rounds)
