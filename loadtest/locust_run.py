"""`make loadtest`: will it hold? Locust against Beacon, then sent against stored.

    python -m loadtest.locust_run [--mode mix|capacity] [--processes N] [--host URL] ...

`--mode mix` (default): the realistic mix of loadtest/locustfile.py (think times 1-30 s) with
`--users` for `--run-time`. `--mode capacity`: loadtest/capacity.py, the same users paced
without think time, the offered rate stepped up until a step crosses a bound; prints the last
step that held. `--processes N`: locust's own workers, for more load than one core of locust
makes. Reports (CSV, HTML, the summary JSON) go to --out (data/loadtest/).

Without --host it starts a local `beacon run` (collector, consumer, embedded ClickHouse) with a
fresh signing key on free loopback ports, and reads what landed through its store port until
the counts reach what each request should have stored or stop changing. With --host (loopback
only, unless --allow-remote) it needs the collector's BEACON_SIGNING_KEYS in its environment
for /c clicks, and --store-url to count what was stored.

Exit status: 0 when every sent event is accounted for (and, in mix mode, no request failed);
1 when requests failed (mix mode) or locust broke; 2 when the store disagrees.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from loadtest import printout
from loadtest.ledger import merge, totals
from loadtest.local_beacon import REPO, LocalBeacon, new_signing_keys
from loadtest.reconcile import read_stored, settled_counters, wait_for_store

LOCUSTFILES = {"mix": REPO / "loadtest" / "locustfile.py",
               "capacity": REPO / "loadtest" / "capacity.py"}  # fmt: skip
CAPACITY_KNOBS = ("start_rps", "step_rps", "max_rps", "step_s", "user_rps", "max_fail_ratio",
                  "max_p95_ms", "max_p99_ms")  # fmt: skip
STOP_TIMEOUT_S = 10  # locust lets users finish the request they are in
SETTLE_S = 15  # the store's counts unchanged this long: it has caught up
LOCUST_MARGIN_S = 180  # beyond the run time: starting workers, stop timeout, reports


def seconds(run_time: str) -> int:
    """Locust's run-time syntax (90, 90s, 2m, 1h30m) in seconds."""
    total, number = 0, ""
    for char in run_time.strip():
        if char.isdigit():
            number += char
            continue
        total += int(number or 0) * {"h": 3600, "m": 60, "s": 1}[char]
        number = ""
    return total + int(number or 0)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--mode", choices=("mix", "capacity"), default="mix")
    p.add_argument("--users", type=int, default=300, help="mix: simulated users")
    p.add_argument("--spawn-rate", type=float, default=50, help="mix: users started a second")
    p.add_argument("--run-time", default="", help="mix: 60s; capacity: the limit, 10m")
    p.add_argument("--processes", type=int, default=0, help="locust worker processes")
    p.add_argument("--host", default="", help="a running collector; default: a local beacon run")
    p.add_argument("--allow-remote", action="store_true", help="let --host leave loopback")
    p.add_argument("--store-url", default="", help="with --host: its store's query port")
    p.add_argument("--store-deadline-s", type=float, default=300)
    p.add_argument("--out", type=Path, default=REPO / "data" / "loadtest")
    cap = p.add_argument_group("capacity mode (defaults in loadtest/capacity.py)")
    for knob in CAPACITY_KNOBS:
        cap.add_argument("--" + knob.replace("_", "-"), type=float)
    opts = p.parse_args(argv)
    opts.run_time = opts.run_time or ("10m" if opts.mode == "capacity" else "60s")
    if opts.host and not (is_loopback(opts.host) or opts.allow_remote):
        p.error(f"--host {opts.host} is not loopback: pass --allow-remote to load it")
    if not 0 <= opts.processes <= (os.cpu_count() or 1):
        p.error(f"--processes: 0 to {os.cpu_count()} (one per core at most)")
    return opts


def locust_command(opts: argparse.Namespace, host: str, prefix: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILES[opts.mode]), "--headless",
        "--host", host, "--stop-timeout", str(STOP_TIMEOUT_S), "--only-summary",
        "--csv", str(prefix), "--html", f"{prefix}.html",
    ]  # fmt: skip
    if opts.processes:
        cmd += ["--processes", str(opts.processes)]
    if opts.mode == "mix":
        cmd += ["--users", str(opts.users), "--spawn-rate", str(opts.spawn_rate)]
        return [*cmd, "--run-time", opts.run_time]
    cmd += ["--time-limit-s", str(seconds(opts.run_time)), "--steps-json", f"{prefix}_steps.json"]
    for knob in CAPACITY_KNOBS:
        if getattr(opts, knob) is not None:
            cmd += ["--" + knob.replace("_", "-"), f"{getattr(opts, knob):g}"]
    return cmd


def capacity_lines(steps_path: Path) -> tuple[list[str], Any]:
    if not steps_path.exists():
        return ["capacity: no step completed"], []
    steps = orjson.loads(steps_path.read_bytes())
    held = [s for s in steps if s["held"]]
    failed = [s for s in steps if not s["held"]]
    lines = []
    if held:
        h = held[-1]
        lines.append(
            f"capacity: held up to {h['offered_rps']:.0f} req/s offered ({h['achieved_rps']:.0f}"
            f" achieved, p95 {h['p95_ms']} ms, p99 {h['p99_ms']} ms) at step {h['step']}"
        )
    else:
        lines.append("capacity: not even the first step held")
    if failed:
        f = failed[0]
        lines.append(f"capacity: step {f['step']} at {f['offered_rps']:.0f} req/s did not hold: "
                     + "; ".join(f["reasons"]))  # fmt: skip
    else:
        lines.append("capacity: no step failed (stopped by --max-rps or the time limit)")
    return lines, steps


def run_locust(cmd: list[str], env: dict[str, str], run_time_s: int) -> int:
    """Locust's exit code; past the run time and a margin, its process group (the master and
    the workers it forked) is ended: the load stays bounded in time even if locust hangs."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    try:
        return proc.wait(run_time_s + LOCUST_MARGIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"locust ran past {run_time_s + LOCUST_MARGIN_S} s: stopped", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    run_tag = secrets.token_hex(6)
    prefix = opts.out / time.strftime(f"locust-{opts.mode}-%Y%m%d-%H%M%S-{run_tag[:4]}")
    workdir = Path(tempfile.mkdtemp(prefix="beacon-loadtest-"))
    keys = os.environ.get("BEACON_SIGNING_KEYS", "") if opts.host else new_signing_keys()
    local = None if opts.host else LocalBeacon(workdir, os.environ, keys)
    try:
        if local is not None:
            try:
                local.start()
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 1
        host = opts.host or (local.host if local else "")
        store_url = opts.store_url or (local.store_url if local else "")
        inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env = {**inherited, "BEACON_SIGNING_KEYS": keys, "BEACON_LOADTEST_RUN": run_tag,
               "BEACON_LOADTEST_LEDGER_DIR": str(workdir / "ledger")}  # fmt: skip
        print(f"locust {opts.mode} against {host}, run tag {run_tag}", flush=True)
        locust_code = run_locust(locust_command(opts, host, prefix), env, seconds(opts.run_time))
        rows = merge(workdir / "ledger")
        counters = settled_counters(host) if local is not None else None
        stored = None
        if store_url:
            print("waiting for the store to catch up ...", flush=True)
            stored = wait_for_store(
                lambda: read_stored(store_url, run_tag), totals(rows, "expected"),
                totals(rows, "maybe"), SETTLE_S, opts.store_deadline_s,
                int(sum(counters["accepted"].values())) if counters else None,
            )  # fmt: skip
    finally:
        code = local.stop() if local is not None else 0
        if local is not None and code != 0:
            print(f"beacon run exited {code}; its log:\n{local.log_path.read_text()[-4000:]}")
        shutil.rmtree(workdir, ignore_errors=True)
    return report(opts, prefix, rows, stored, counters, locust_code)


def report(opts: argparse.Namespace, prefix: Path, rows: Any, stored: Any, counters: Any,
           locust_code: int) -> int:  # fmt: skip
    summary = printout.summary(rows, stored, counters)
    lines = ["", "what each kind of request sent and should have stored:"]
    lines += printout.request_lines(rows)
    if stored is not None:
        lines += ["", f"sent vs stored per event type (beacon.events, this run's rows; the "
                  f"store caught up in {stored.waited_s:.0f} s: {stored.how}):"]  # fmt: skip
        lines += [*printout.type_lines(summary["by_type"]), ""]
        lines += printout.explanation(rows, stored)
    if counters is not None:
        lines += printout.collector_lines(counters, rows)
    if opts.mode == "capacity":
        cap, summary["capacity_steps"] = capacity_lines(Path(f"{prefix}_steps.json"))
        lines += ["", *cap]
    verdict = "every sent event is accounted for" if summary["agrees"] else "MISMATCH"
    if stored is None:
        verdict = "not compared: no store to read (--store-url)"
    lines += ["", f"verdict: {verdict}", f"reports: {prefix}.html, {prefix}_stats.csv, "
              f"{prefix}_summary.json"]  # fmt: skip
    Path(f"{prefix}_summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print("\n".join(lines), flush=True)
    if stored is not None and not summary["agrees"]:
        return 2
    if opts.mode == "capacity":  # failures at the breaking step are the finding
        return 0 if locust_code <= 1 and summary.get("capacity_steps") else 1
    return locust_code


if __name__ == "__main__":
    sys.exit(main())
