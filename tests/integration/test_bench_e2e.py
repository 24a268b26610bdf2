"""loadtest/bench_e2e's CPU split: the consumer's process apart from the rest of Beacon, found
by following the process tree down from `beacon run` (each part runs in a session of its own)."""

from __future__ import annotations

import subprocess
import sys
import time

from loadtest.bench_e2e import cpu_by_role

WAIT_S = 60
# /proc counts CPU in clock ticks, sampled: a child that spent 0.6 s by its own precise clock
# can show 0.59 there for good.
TICKS_SLACK_S = 0.05
# Spends `argv[1]` seconds of CPU, then waits to be killed: its CPU time stays put.
BURN = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < float(sys.argv[1]): pass\ntime.sleep(600)"  # noqa: E501
# A parent that starts a "consumer" and a "collector" in sessions of their own, as `beacon run`
# starts its parts, and spends nothing itself.
TREE = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # the kids killed on the way
burn = {BURN!r}
kids = [subprocess.Popen([sys.executable, "-c", burn, "0.6", "consume"], start_new_session=True),
        subprocess.Popen([sys.executable, "-c", burn, "0.3", "serve"], start_new_session=True)]
try:
    time.sleep(600)
finally:
    for kid in kids:
        kid.kill()
"""


def test_the_cpu_of_beacon_runs_parts_is_told_apart() -> None:
    root = subprocess.Popen([sys.executable, "-c", TREE])
    bystander = subprocess.Popen([sys.executable, "-c", BURN, "0.3", "consume"])
    try:
        deadline = time.monotonic() + WAIT_S
        used = cpu_by_role(root.pid)
        spent = 0.0  # the bystander's own: once it is all spent, counting it would show
        while (
            used["consumer"] < 0.6 - TICKS_SLACK_S
            or used["collector"] < 0.3 - TICKS_SLACK_S
            or spent < 0.3 - TICKS_SLACK_S
        ):
            assert time.monotonic() < deadline, (used, spent)
            time.sleep(0.1)
            used = cpu_by_role(root.pid)
            spent = cpu_by_role(bystander.pid)["consumer"]
        used = cpu_by_role(root.pid)
        # The parent's own start-up and the two children's; not the bystander outside the tree.
        assert used["consumer"] < 0.85, used
        assert used["collector"] < 0.3 + 0.5, used
    finally:
        bystander.kill()
        bystander.wait(WAIT_S)
        root.terminate()
        root.wait(WAIT_S)
