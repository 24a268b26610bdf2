"""`make loadtest` as a user runs it: locust against a real `beacon run`, then sent vs stored.

Each test runs `python -m loadtest.locust_run` for a few seconds and checks what it printed
and wrote: every event type sent is accounted for (stored equals what the requests should have
left, after the drops by design and the requests in flight when locust stopped), the
collector's own counters agree, and the HTML report is kept. Never the figures of speed: a
capacity step may fail on a busy machine, and that is a finding, not a test failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_DEADLINE_S = 200
# Locust's own multi-process mode, with as many workers as this machine has cores (up to 2).
PROCESSES = min(2, os.cpu_count() or 1)


def locust_run(out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.locust_run", "--out", str(out), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_DEADLINE_S, check=False,
    )  # fmt: skip
    summaries = sorted(out.glob("*_summary.json"))
    assert summaries, done.stdout[-3000:] + done.stderr[-3000:]
    return done, orjson.loads(summaries[-1].read_bytes())


def type_table(stdout: str) -> dict[str, list[str]]:
    """The printed per-type table: event type -> its cells."""
    lines = stdout.split("sent vs stored per event type", 1)[1].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def assert_accounted_for(done: subprocess.CompletedProcess[str], summary: dict[str, Any]) -> None:
    out = done.stdout
    assert "verdict: every sent event is accounted for" in out, out[-4000:]
    printed = type_table(out)
    assert set(printed) == set(summary["by_type"])
    for kind, f in summary["by_type"].items():
        assert printed[kind][-1] == "ok", printed[kind]
        assert f["sent"] == (
            f["should_store"] + f["dropped_by_design"] + f["refused"] + f["uncertain"]
        ), (kind, f)
        assert f["should_store"] <= f["stored"] <= f["should_store"] + f["uncertain"], (kind, f)
    a = summary["arithmetic"]
    assert a["requests"] - a["not_events"] + a["extra_in_batches"] == a["sent"]
    assert a["sent"] - a["dropped_by_design"] - a["refused"] - a["uncertain"] == a["expected"]
    # The collector's own counters tell the same story from the other side.
    stored = sum(f["stored"] for f in summary["by_type"].values())
    assert sum(summary["collector"]["accepted"].values()) == stored
    assert summary["collector"]["dropped"].get("dnt", 0) == a["dropped_by_design"]
    assert summary["stored_by_transport"] == summary["expected_by_transport"] or a["uncertain"]


def html_report(out: Path) -> Path:
    reports = list(out.glob("locust-*.html"))
    assert len(reports) == 1, reports
    assert "<html" in reports[0].read_text()[:2000].lower()
    return reports[0]


@pytest.mark.timeout(RUN_DEADLINE_S + 60)
def test_the_realistic_mix_stores_what_each_request_should(tmp_path: Path) -> None:
    done, summary = locust_run(
        tmp_path, "--users", "20", "--spawn-rate", "20", "--run-time", "10s",
        "--processes", str(PROCESSES),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert_accounted_for(done, summary)
    assert summary["sent_total"] > 0
    # Page loads fetch the snippet, which is no event: requests and events differ by design.
    assert summary["requests"]["GET /t.js"]["sent"] == {}
    html_report(tmp_path)


@pytest.mark.timeout(RUN_DEADLINE_S + 60)
def test_a_capacity_run_steps_up_and_every_kind_of_request_is_accounted_for(
    tmp_path: Path,
) -> None:
    done, summary = locust_run(
        tmp_path, "--mode", "capacity", "--start-rps", "200", "--step-rps", "100",
        "--max-rps", "300", "--step-s", "8", "--run-time", "60s",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert_accounted_for(done, summary)
    steps = summary["capacity_steps"]
    assert 1 <= len(steps) <= 2
    assert "capacity: " in done.stdout
    # No think time: every kind of request shows up within seconds, clicks through /c too.
    requests = summary["requests"]
    assert {"click", "open", "impression", "pageview", "engagement", "custom"} <= set(
        summary["by_type"]
    )
    assert requests["GET /c click (mail)"]["expected"].get("click", 0) > 0
    assert requests["GET /c (prefetch)"]["expected"].get("click", 0) > 0  # flagged, stored
    for not_an_event in ("GET /t.js", "HEAD /c (link checker)"):
        assert requests[not_an_event]["answered"] > 0 and requests[not_an_event]["sent"] == {}
    assert summary["stored_by_transport"]["redirect"] > 0
    html_report(tmp_path)
