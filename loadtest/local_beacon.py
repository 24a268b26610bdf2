"""`beacon run` for a load test: free loopback ports, a throwaway data directory, a fresh
signing key the load test signs its click links with."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from loadtest.bench.system import free_port

REPO = Path(__file__).resolve().parents[1]
READY_DEADLINE_S = 90
STOP_GRACE_S = 120  # SIGTERM flushes the buffer and inserts what is left: give it time


def new_signing_keys() -> str:
    """A `kid:secret` item for BEACON_SIGNING_KEYS, made for this run only."""
    return f"loadtest:{secrets.token_urlsafe(24)}"


class LocalBeacon:
    """`beacon run` on free loopback ports with its data under `workdir`."""

    def __init__(self, workdir: Path, env: Mapping[str, str], signing_keys: str) -> None:
        self.port, store_port = free_port(), free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self.store_url = f"http://127.0.0.1:{store_port}"
        self.log_path = workdir / "beacon-run.log"
        self.env = {
            **{k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
            "BEACON_DATA_DIR": str(workdir / "data"),
            "BEACON_PORT": str(self.port),
            "BEACON_STORE_PORT": str(store_port),
            "BEACON_SIGNING_KEYS": signing_keys,
            "BEACON_LOG_LEVEL": "WARNING",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "beacon", "run"]
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"beacon run exited:\n{self.log_path.read_text()}")
            if self._answers(self.host + "/readyz") and self._answers(self.store_url + "/healthz"):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"beacon run did not get ready:\n{self.log_path.read_text()}")

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> int:
        """SIGTERM, then the exit code; killed after STOP_GRACE_S."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
