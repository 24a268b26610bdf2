"""`beacon serve --workers N`: restarts, one /metrics for all workers, and a lossless SIGTERM."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from collector.supervisor import MIN_UPTIME_S, RESTART_DELAY_MAX_S, RESTART_DELAY_S, Child
from contract.segments import OPEN_SUFFIX, closed_segments
from tests.support.helpers import free_port

START_TIMEOUT_S = 30.0


def get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """One request on a new connection (urllib does not keep connections alive), so requests
    spread over the workers as the kernel hashes connections to listening sockets."""
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def children_of(pid: int) -> set[int]:
    """Live (not zombie) child processes of pid, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def scrape(base: str) -> dict[str, float]:
    """`name{label="v",...}` -> value, from one /metrics answer."""
    status, body = get(base + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


class Workers:
    """A `beacon serve --workers N` process on loopback with its own data directory."""

    def __init__(self, tmp_path: Path, workers: int = 2, **env: str) -> None:
        self.data_dir = tmp_path / "data"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "serve.log"
        inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self.env = {
            **inherited,
            "BEACON_DATA_DIR": str(self.data_dir),
            "BEACON_PORT": str(self.port),
            "BEACON_SINK": "spool",
            "BEACON_DRAIN_MS": "300",
            **env,
        }
        cmd = [sys.executable, "-m", "beacon", "serve", "--workers", str(workers)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)
        self.workers = workers
        self.wait_workers()

    def log(self) -> str:
        return self.log_path.read_text()

    def pids(self) -> set[int]:
        return children_of(self.proc.pid)

    def ready(self) -> bool:
        try:
            return get(self.base + "/readyz")[0] == 200
        except OSError:
            return False

    def wait_workers(self) -> set[int]:
        """Until every worker runs and /metrics counts them all as serving."""

        def up() -> bool:
            assert self.proc.poll() is None, self.log()
            return (
                len(self.pids()) == self.workers
                and self.ready()
                and scrape(self.base).get("beacon_workers") == self.workers
            )

        wait_for(up, START_TIMEOUT_S, f"{self.workers} workers\n{self.log()}")
        return self.pids()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        """After a failed test: SIGTERM first, so the master still removes its metrics dir."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    started: list[Workers] = []

    def start(*args, **kwargs) -> Workers:  # type: ignore[no-untyped-def]
        w = Workers(tmp_path, *args, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        pids = w.pids()
        w.kill()
        for pid in pids:  # SIGTERM by the kernel when the master dies (PR_SET_PDEATHSIG)
            wait_for(lambda pid=pid: not alive(pid), 30, f"worker {pid} to exit")


def spooled(data_dir: Path) -> list[dict]:
    spool = data_dir / "spool"
    assert not list(spool.glob("*" + OPEN_SUFFIX))  # every worker closed its segment
    return [orjson.loads(line) for p in closed_segments(spool) for line in p.read_bytes().split()]


def writers(data_dir: Path) -> set[int]:
    """Worker pids that wrote spool segments (`<ms>-<pid>-<seq>.ndjson`)."""
    return {int(p.name.split("-")[1]) for p in closed_segments(data_dir / "spool")}


def test_a_killed_worker_is_restarted_and_the_others_keep_answering(serve) -> None:  # type: ignore[no-untyped-def]
    w = serve()
    first = w.wait_workers()
    restarted: set[int] = set()
    for victim in sorted(first):
        os.kill(victim, signal.SIGKILL)
        # Reaped, not just a zombie leader: its other threads hold the socket until they end,
        # and connections the kernel queued on it are reset (net.ipv4.tcp_migrate_req=0).
        wait_for(lambda v=victim: not Path(f"/proc/{v}").exists(), 10, "the worker reaped")
        # While the supervisor waits out the restart delay, the survivor takes every connection.
        for i in range(50):
            assert get(f"{w.base}/p.gif?e=open&s=k&r={victim}-{i}")[0] == 200
        now = w.wait_workers()
        assert victim not in now and len(now) == 2
        restarted |= now - first
    # Both original workers are gone: everything answering now was started by the supervisor.
    assert not (w.pids() & first) and len(restarted) >= 2
    for i in range(20):
        assert get(f"{w.base}/p.gif?e=open&s=k&r=after-{i}")[0] == 200
    metrics = scrape(w.base)
    assert metrics["beacon_workers"] == 2  # dead workers' live gauges were marked dead
    assert metrics["beacon_worker_starts_total"] == 4
    assert "restart #1" in w.log()
    assert w.stop() == 0


def test_a_restart_that_cannot_start_its_worker_is_tried_again_and_the_others_go_on(serve) -> None:  # type: ignore[no-untyped-def]
    w = serve()
    first = sorted(w.wait_workers())
    # The supervisor may open no descriptor more (EMFILE): the restart's socket cannot be made.
    limit = resource.prlimit(w.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(w.proc.pid, resource.RLIMIT_NOFILE, (0, limit[1]))
    try:
        os.kill(first[0], signal.SIGKILL)
        wait_for(lambda: w.log().count("could not be restarted") >= 2, 30, "two tries")
        assert w.proc.poll() is None, w.log()  # the supervisor lives on
        assert w.pids() == {first[1]}  # and so does the other worker, still answering
        for i in range(20):
            assert get(f"{w.base}/p.gif?e=open&s=k&r=limited-{i}")[0] == 200
    finally:
        resource.prlimit(w.proc.pid, resource.RLIMIT_NOFILE, limit)
    # Descriptors again: the next try starts it.
    assert first[1] in w.wait_workers()
    assert "worker 0 restarted" in w.log() or "worker 1 restarted" in w.log()
    assert w.stop() == 0


def test_one_metrics_page_shows_the_sum_over_all_workers(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    # A file left by an earlier run: the master must empty the directory before starting.
    stale = MmapedDict(str(metrics_dir / "counter_99999.db"))
    key = mmap_key("beacon_requests", "beacon_requests_total", ["endpoint", "outcome"],
                   ["pixel", "recorded"], "HTTP requests by endpoint and outcome.")  # fmt: skip
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    w = serve(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    pids = w.wait_workers()
    for i in range(200):
        assert get(f"{w.base}/p.gif?e=open&s=sum&r=r{i}")[0] == 200
    batch = orjson.dumps([{"e": "click", "s": "sum", "r": f"c{i}"} for i in range(5)])
    for _ in range(3):
        assert get(f"{w.base}/e", batch)[0] == 204
    # Each worker wrote its own files, so both took requests (and both answer the scrapes).
    written = {int(p.stem.rsplit("_", 1)[1]) for p in metrics_dir.glob("counter_*.db")}
    assert written == pids
    # A worker adds its hot-path counts to the shared files on its buffer tick (20 ms): a
    # worker may fold its pixels one tick before the POSTs it took after them.
    pixels = 'beacon_hot_path_seconds_count{endpoint="pixel"}'
    posts = 'beacon_requests_total{endpoint="events",outcome="recorded"}'
    deadline = time.monotonic() + 10
    while (m := scrape(w.base)).get(pixels) != 200 or m.get(posts) != 3:
        assert time.monotonic() < deadline, "the workers' counts never reached 200 and 3"
        time.sleep(0.05)
    for _ in range(10):  # new connections: scrapes land on either worker, all see the sum
        m = scrape(w.base)
        assert m['beacon_requests_total{endpoint="pixel",outcome="recorded"}'] == 200
        assert m['beacon_requests_total{endpoint="events",outcome="recorded"}'] == 3
        assert m['beacon_events_accepted_total{transport="pixel"}'] == 200
        assert m['beacon_events_accepted_total{transport="beacon"}'] == 15
        assert m['beacon_hot_path_seconds_count{endpoint="pixel"}'] == 200
        assert m["beacon_workers"] == 2
        assert m["beacon_buffer_events"] >= 0
        # A spool collector has no Kafka: no 0 for BeaconKafkaUnreachable to page on.
        assert "beacon_kafka_up" not in m
    assert w.stop() == 0
    assert metrics_dir.is_dir()  # a configured directory is the operator's: emptied, not removed


def test_sigterm_stops_every_worker_and_loses_no_accepted_event(serve) -> None:  # type: ignore[no-untyped-def]
    # A long linger keeps events in the workers' buffers until the shutdown flushes them.
    w = serve(BEACON_LINGER_MS="2000", BEACON_DRAIN_MS="3000")
    pids = w.wait_workers()
    environ = Path(f"/proc/{min(pids)}/environ").read_bytes().split(b"\0")
    metrics_dir = Path(next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")
                            ).split(b"=", 1)[1].decode())  # fmt: skip
    assert metrics_dir.is_dir()
    expected = set()
    for i in range(300):
        assert get(f"{w.base}/p.gif?e=open&s=stop&r=p{i}")[0] == 200
        expected.add(f"p{i}")
    batch = orjson.dumps([{"e": "custom", "s": "stop", "r": f"b{i}"} for i in range(50)])
    assert get(f"{w.base}/e", batch)[0] == 204
    expected |= {f"b{i}" for i in range(50)}
    w.proc.send_signal(signal.SIGTERM)
    # Every worker drains: not ready, still recording what reaches it. Pixels go on until
    # nothing listens; each answered one is kept, and some were answered after /readyz said
    # 503 (that order is the claim, not a count within the drain).
    attempted, answered_not_ready = set(expected), 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        recipient = f"d{len(attempted)}"
        try:
            ready = get(w.base + "/readyz")[0]
            attempted.add(recipient)
            status = get(f"{w.base}/p.gif?e=open&s=stop&r={recipient}")[0]
        except OSError:
            break  # no longer listening: the drain is over
        assert status == 200
        expected.add(recipient)
        answered_not_ready += ready == 503
        time.sleep(0.02)
    print(f"{answered_not_ready} pixels answered while not ready")
    assert answered_not_ready > 0, "no pixel answered after readiness went 503"
    assert w.proc.wait(60) == 0, w.log()
    assert not any(alive(pid) for pid in pids)
    recipients = [e["recipient"] for e in spooled(w.data_dir)]
    assert len(recipients) == len(set(recipients))  # none twice
    # Every answered event is kept; the last pixel sent may have landed unanswered.
    assert expected <= set(recipients) <= attempted
    assert writers(w.data_dir) == pids  # both workers took events, and both flushed them
    assert not metrics_dir.exists()  # the run's own temporary directory is removed


def holders(port: int, pids: set[int]) -> dict[int, int]:
    """pid -> established connections it holds on `port` (server side), from /proc."""
    inodes = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # ESTABLISHED
            inodes[f"socket:[{fields[9]}]"] = True
    held = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        held[pid] = sum(1 for fd in fds.iterdir() if os.readlink(fd) in inodes)
    return held


def test_every_worker_takes_connections_from_the_first_even_while_starting(
    tmp_path: Path,
) -> None:
    """A client that connects as soon as the collector answers (a load balancer's keep-alive
    pool) gets every worker, not the first one up: the master makes every worker's listening
    socket before starting it. A worker is held stopped here before it could bind anything."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env |= {"BEACON_DATA_DIR": str(tmp_path / "data"), "BEACON_PORT": str(port),
            "BEACON_SINK": "memory"}  # fmt: skip
    cmd = [sys.executable, "-m", "beacon", "serve", "--workers", "2"]
    with open(tmp_path / "serve.log", "ab") as log:
        master = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    late = 0
    try:
        wait_for(lambda: len(children_of(master.pid)) == 2, START_TIMEOUT_S, "two workers")
        late = max(children_of(master.pid))  # started second
        os.kill(late, signal.SIGSTOP)
        first = children_of(master.pid) - {late}

        def ready() -> bool:  # a connection queued for the stopped worker waits: try another
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                    c.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                    return c.recv(64).startswith(b"HTTP/1.1 200")
            except OSError:
                return False

        wait_for(ready, START_TIMEOUT_S, "the first worker to answer")
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(24)]
        os.kill(late, signal.SIGCONT)
        for client in clients:
            client.settimeout(START_TIMEOUT_S)
            client.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(64).startswith(b"HTTP/1.1 200")
        held = holders(port, first | {late})
        assert sum(held.values()) == len(clients)
        assert held[late] > 0 and all(held[pid] > 0 for pid in first), held
        for client in clients:
            client.close()
    finally:
        if late:
            os.kill(late, signal.SIGCONT)
        master.terminate()
        master.wait(60)


def test_a_port_someone_listens_on_is_refused(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {**os.environ, "BEACON_DATA_DIR": str(tmp_path), "BEACON_PORT": str(port)}
        done = subprocess.run(
            [sys.executable, "-m", "beacon", "serve", "--workers", "2"],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is in use" in done.stderr


def test_restart_delay_doubles_while_a_child_keeps_dying_young() -> None:
    child = Child("worker", ["true"], {})
    delays = []
    for _ in range(3):
        child.started_at = 100.0
        delays.append(child.schedule_restart(now=100.0 + 0.1))
    assert delays == [RESTART_DELAY_S * 2, RESTART_DELAY_S * 4, RESTART_DELAY_S * 8]
    child.started_at = 100.0
    assert child.schedule_restart(now=100.0 + MIN_UPTIME_S + 1) == RESTART_DELAY_S
    assert child.restarts == 4


def test_restart_delay_stays_at_its_bound_however_long_a_child_keeps_dying_young() -> None:
    child = Child("worker", ["true"], {})
    child.started_at = 100.0
    for _ in range(2000):  # hours of a child that fails at once (2.0**1024 overflows a float)
        delay_s = child.schedule_restart(now=100.0 + 0.1)
    assert delay_s == RESTART_DELAY_MAX_S
