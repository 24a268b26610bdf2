"""The eight servers the benchmark compares, each started as its own process on one CPU.

Every one answers GET /p.gif with the same 43-byte GIF and the same no-cache headers:
nginx's empty_gif (the ceiling), a bare aiohttp + uvloop handler (the framework floor Beacon's
hot path is measured against), FastAPI on uvicorn (the usual Python choice), and Beacon's
collector with the in-memory sink, the disk spool, the Kafka sink, the Kafka sink with the
write-ahead log (BEACON_DURABILITY=wal), and the Kafka sink with every pixel through
aiohttp's web layer (BEACON_PIXEL_FAST_PATH=0: what the fast path is worth).
"""

from __future__ import annotations

import grp
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench.system import NGINX, pin_to

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Context:
    """What a server needs to start: its port, a scratch directory, the broker if any."""

    port: int
    workdir: Path
    kafka_bootstrap: str = ""


Command = Callable[[Context], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    command: Command
    ready_path: str = "/p.gif"
    beacon: bool = False  # a Beacon collector: has /readyz and /metrics
    needs_kafka: bool = False


def python_env(**extra: str) -> dict[str, str]:
    """This environment, the repo importable, no Prometheus multiprocess directory."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def nginx_conf(ctx: Context) -> str:
    """nginx with one worker and keep-alive without a request limit (wrk keeps connections;
    nginx would close each after 1000 requests by default, aiohttp never)."""
    user = ""
    if os.geteuid() == 0:  # the worker drops to this user; Debian has nogroup, not nobody
        group = "nogroup"
        try:
            grp.getgrnam(group)
        except KeyError:
            group = "nobody"
        user = f"user nobody {group};"
    tmp = ctx.workdir / "nginx"
    return f"""\
{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{ctx.port};
        location = /p.gif {{
            empty_gif;
            add_header Cache-Control "no-store, no-cache, must-revalidate, max-age=0";
            add_header Pragma no-cache;
            add_header Expires 0;
        }}
    }}
}}
"""


def nginx(ctx: Context) -> tuple[list[str], dict[str, str]]:
    tmp = ctx.workdir / "nginx"
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(ctx))
    return [NGINX, "-p", str(tmp), "-c", str(conf)], dict(os.environ)


def bare_aiohttp(ctx: Context) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, "-m", "loadtest.bench.apps.bare_aiohttp", str(ctx.port)]
    return argv, python_env()


def fastapi(ctx: Context) -> tuple[list[str], dict[str, str]]:
    argv = [
        sys.executable, "-m", "uvicorn", "loadtest.bench.apps.fastapi_pixel:app",
        "--host", "127.0.0.1", "--port", str(ctx.port), "--workers", "1",
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    return argv, python_env()


def beacon(sink: str, durability: str = "memory", fast_path: bool = True) -> Command:
    def command(ctx: Context) -> tuple[list[str], dict[str, str]]:
        # One process, as pinned to one core: `--workers 1` serves in-process, no master.
        argv = [sys.executable, "-m", "beacon", "serve", "--workers", "1", "--sink", sink]
        env = python_env(
            BEACON_HOST="127.0.0.1",
            BEACON_PORT=str(ctx.port),
            BEACON_DATA_DIR=str(ctx.workdir / "data"),
            BEACON_SECRET="bench-secret-0123",
            BEACON_DRAIN_MS="0",
            BEACON_LOG_LEVEL="WARNING",
            BEACON_KAFKA_BOOTSTRAP=ctx.kafka_bootstrap if sink == "kafka" else "",
            # wal: every event is appended to a local write-ahead file before its answer.
            BEACON_DURABILITY=durability,
            BEACON_PIXEL_FAST_PATH="1" if fast_path else "0",
        )
        return argv, env

    return command


SERVERS = {
    s.name: s
    for s in (
        Server("nginx", "nginx empty_gif", nginx),
        Server("aiohttp", "bare aiohttp + uvloop", bare_aiohttp),
        Server("fastapi", "FastAPI + uvicorn", fastapi),
        Server("beacon-memory", "Beacon, memory sink", beacon("memory"), "/readyz", True),
        Server("beacon-spool", "Beacon, disk spool", beacon("spool"), "/readyz", True),
        Server("beacon-kafka", "Beacon, Kafka sink", beacon("kafka"), "/readyz", True, True),
        Server(
            "beacon-kafka-wal",
            "Beacon, Kafka sink + WAL",
            beacon("kafka", "wal"),
            "/readyz",
            True,
            True,
        ),
        Server(
            "beacon-kafka-aiohttp",
            "Beacon, Kafka sink, no fast path",
            beacon("kafka", fast_path=False),
            "/readyz",
            True,
            True,
        ),
    )
}


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class Running:
    """A started server: its process (pinned to `cpu`), its log, its base URL."""

    def __init__(self, server: Server, ctx: Context, cpu: int) -> None:
        self.server = server
        self.ctx = ctx
        self.base = f"http://127.0.0.1:{ctx.port}"
        self.log_path = ctx.workdir / f"{server.name}.log"
        argv, env = server.command(ctx)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=pin_to(cpu),
                start_new_session=True,  # nginx forks a worker: stop() signals the group
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server.name} exited:\n{self.log_tail()}")
            try:
                if http_status(self.base + self.server.ready_path) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.server.name} not ready:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
