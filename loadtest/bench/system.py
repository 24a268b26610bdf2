"""The machine side of the benchmark: tools from Debian, CPU pinning, memory of a process tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

NGINX = "/usr/sbin/nginx"
# Debian package -> the file that tells it is installed.
TOOLS = {"wrk": "/usr/bin/wrk", "nginx-light": NGINX}
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def missing_tools() -> list[str]:
    return [pkg for pkg, path in TOOLS.items() if not Path(path).exists()]


def ensure_tools() -> None:
    """Install wrk and nginx-light from Debian when missing (root + apt-get)."""
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"bench: needs {' '.join(missing)}: apt-get install {' '.join(missing)}")
    print(f"bench: installing {' '.join(missing)} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # nginx's package starts a system nginx on port 80 after installing; the benchmark starts
    # its own. policy-rc.d exit 101 tells invoke-rc.d not to start services (Debian policy).
    blocker = not POLICY_RC_D.exists()
    if blocker:
        POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if blocker:
            POLICY_RC_D.unlink(missing_ok=True)


def tool_version(argv: list[str]) -> str:
    """First line a tool prints about its version (nginx writes it to stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def pin_to(cpu: int) -> Callable[[], None]:
    """A preexec_fn: the child (and whatever it starts) runs on `cpu` only."""
    return lambda: os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Run this process on `cpu` meanwhile, so processes started by library code inherit it."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM) of a process tree, in MB."""
    totals = {"rss_mb": 0.0, "peak_rss_mb": 0.0}
    for member in descendants(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                name = "rss_mb" if key == "VmRSS" else "peak_rss_mb"
                totals[name] += int(value.split()[0]) / 1024
    return {k: round(v, 1) for k, v in totals.items()}


def free_port() -> int:
    """A loopback port free now (the benches and the load test start servers on them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
