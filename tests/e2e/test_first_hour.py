"""What a newcomer meets in the first hour, through the real `beacon` command: one process per
data directory, a signing key the collector and `beacon url` agree on, and a command line that
says what went wrong in the user's own words."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.beacon_run import Beacon

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60  # a refused command ends at once; this only bounds a hang


def beacon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beacon", *args],
        cwd=REPO,
        env={**os.environ, "BEACON_LOG_LEVEL": "WARNING", **(env or {})},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def status_and_location(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=10) as r:
            return r.status, r.headers.get("Location", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", "")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Beacon]:
    """`beacon run` with no signing key configured, as the README's first steps start it."""
    with Beacon(tmp_path_factory.mktemp("first-hour") / "data") as instance:
        yield instance


@pytest.mark.parametrize(
    ("args", "advice"),
    [
        (["run"], "give this one a --data-dir of its own"),
        (["serve", "--workers", "1"], "give this one a --data-dir of its own"),
        (["consume"], "give this one a --data-dir of its own"),
        (["migrate"], "it migrated the store as it started"),
        (["settle"], "settles the rollups by itself"),
    ],
)
def test_a_second_process_on_a_data_directory_in_use_ends_with_one_line(
    running: Beacon, args: list[str], advice: str
) -> None:
    assert running.proc is not None
    done = beacon(*args, "--data-dir", str(running.data_dir), env={"BEACON_PORT": "0"})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"beacon {args[0]}: {running.data_dir}/ is in use by beacon run ")
    assert f"(pid {running.proc.pid}, since " in lines[0]
    assert advice in lines[0]
    assert running.proc.poll() is None  # the owner carries on


def test_report_asks_the_owner_of_its_own_data_directory_only(
    running: Beacon, tmp_path: Path
) -> None:
    running.query("SELECT 1")
    # The owner's store port comes from the data directory, whatever --store-port says.
    mine = beacon("report", "--data-dir", str(running.data_dir), "--store-port", "1")
    assert mine.returncode == 0, mine.stderr
    # Another directory is never answered by the store that happens to run.
    other = beacon("report", "--data-dir", str(tmp_path), "--store-port", str(running.store_port))
    assert other.returncode == 1
    assert other.stderr.strip() == f"beacon report: no store at {tmp_path}/clickhouse: run " \
        "`beacon run` first"  # fmt: skip


def test_beacon_url_signs_with_the_key_the_collector_checks(running: Beacon) -> None:
    made = beacon(
        "url", "click", "--data-dir", str(running.data_dir), "--base", running.base,
        "--dest", "https://shop.example/spring", "--campaign", "first-hour", "--recipient", "r1",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    url = made.stdout.splitlines()[0]
    status, location = status_and_location(url)
    assert status == 302 and location.startswith("https://shop.example/spring?bcid=")
    wanted = (
        "SELECT count() FROM beacon.events WHERE event_type = 'click' AND campaign = 'first-hour'"
    )
    deadline = time.monotonic() + WAIT_S
    while running.query(wanted).strip() != "1" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running.query(wanted).strip() == "1"
    kid = url.rsplit("sig=", 1)[1].split(".")[0]
    log = running.log_path.read_text()
    assert f"  signing  key {kid}, kept in {running.data_dir}/signing-keys" in log


def test_a_refused_click_is_logged_with_its_reason(running: Beacon) -> None:
    forged = f"{running.base}/c?d=https%3A%2F%2Fevil.example%2F&sig=k0.AAAAAAAAAAAAAAAAAAAAAA"
    assert status_and_location(forged)[0] == 400
    deadline = time.monotonic() + WAIT_S
    while "click link refused (unknown_key)" not in running.log_path.read_text():
        assert time.monotonic() < deadline, running.log_path.read_text()[-2000:]
        time.sleep(0.2)


def test_the_banner_prints_a_command_that_runs_as_printed(tmp_path: Path) -> None:
    """Started by its script in the virtualenv, as `make run` does; the banner's report line is
    then run exactly as printed, from the same directory."""
    script = Path(sys.executable).parent / "beacon"
    instance = Beacon(tmp_path / "data")
    instance.command = [str(script), "run"]
    with instance:
        lines = instance.log_path.read_text().splitlines()
        report = next(line for line in lines if line.startswith("  report   ")).split(None, 1)[1]
        assert report.split()[0] == os.path.relpath(script, REPO)
        done = subprocess.run(
            shlex.split(report), cwd=REPO, capture_output=True, text=True, timeout=WAIT_S
        )
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["serve", "--set", "no_such_name=1"], 2, "beacon: --set no_such_name: no such setting"),
        (["serve", "--set", "ip_mod=drop"], 2, "(did you mean ip_mode?)"),
        (["serve", "--port", "abc"], 2, "beacon: --port: expected an integer, got 'abc'"),
        (["serve", "--set", "port=abc"], 2, "beacon: --set port: expected an integer"),
        (["report", "--bogus"], 2, "usage: beacon report "),
        (["url", "click", "--bogus"], 2, "beacon url click: error: unrecognized arguments"),
    ],
)
def test_the_command_line_speaks_of_what_was_typed(args: list[str], code: int, said: str) -> None:
    done = beacon(*args)
    assert done.returncode == code
    assert said in done.stderr
    assert "BEACON_PORT" not in done.stderr and "Traceback" not in done.stderr


def test_unknown_setting_lists_the_settings() -> None:
    done = beacon("serve", "--set", "no_such_name=1")
    listed = done.stderr.split("the settings are: ", 1)[1].strip().split(", ")
    assert {"ip_mode", "port", "batch_max_rows", "dashboard_token", "log_level"} <= set(listed)


def test_version() -> None:
    done = beacon("--version")
    assert done.returncode == 0
    assert done.stdout.strip().startswith("beacon ") and done.stdout.strip() != "beacon unknown"
