#!/usr/bin/env python3
"""Run a real Apache Kafka broker (KRaft, broker+controller) on loopback: one, or a cluster.

No Docker here, so the broker runs from the Maven Central jars listed in pom.xml beside this
file, with Java 17. Standard library only, so CI and tests can run it before any venv exists.

    python3 deploy/kafka/kafka.py fetch                 # download the jars (CI warm-up)
    python3 deploy/kafka/kafka.py up [--port 9092] [--controller-port 9093] [--dir DIR]
    python3 deploy/kafka/kafka.py up --nodes 3 [...]    # node i on both ports + 2*(i-1)
    python3 deploy/kafka/kafka.py down [--dir DIR]

`up` prints only the bootstrap address(es) on stdout (`BOOTSTRAP=$(... up)` works); progress
and errors go to stderr. Tests import this file by path (tests/support/kafka_broker.py) and call
start_broker() / stop_broker(), or start_cluster() for several nodes, each a KRaft voter, in
DIR/node-<id>.
"""

import argparse
import base64
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
DEFAULT_DIR = Path(tempfile.gettempdir()) / "beacon-kafka"
JVM_HEAP = ("-Xms256m", "-Xmx512m")  # a test broker; Kafka's own default is 1 GiB

# Quiet log: warnings, the INFO line that says the server started, and the metadata quorum's
# changes of role (which node leads it). It goes to stdout, which start_broker() sends to
# DIR/kafka.log.
LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
logger.quorum.name = org.apache.kafka.raft.QuorumState
logger.quorum.level = INFO
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted or started."""


def kafka_version() -> str:
    """The Kafka version pinned in pom.xml (single source of truth)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM).getroot().findtext("m:properties/m:kafka.version", namespaces=ns)
    if not version:
        raise BrokerError(f"no <kafka.version> property in {POM}")
    return version


def cache_dir(environ: Mapping[str, str]) -> Path:
    """Where the jars live: $BEACON_KAFKA_CACHE or ~/.cache/beacon/kafka-<version>."""
    if environ.get("BEACON_KAFKA_CACHE"):
        return Path(environ["BEACON_KAFKA_CACHE"])
    return Path.home() / ".cache" / "beacon" / f"kafka-{kafka_version()}"


def fetch(cache: Path | None = None) -> Path:
    """Copy the broker's jars into <cache>/libs once; return that libs dir."""
    libs = (cache or cache_dir(os.environ)) / "libs"
    if libs.is_dir():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn not found on PATH (apt-get install maven)")
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Download into a private dir and rename: an interrupted or concurrent fetch never leaves
    # a half-filled libs/ that later runs would take as complete.
    partial = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=libs.parent))
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise BrokerError(f"jar fetch failed: {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    try:
        partial.rename(libs)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(partial, ignore_errors=True)
    return libs


def server_properties(
    data_dir: Path,
    port: int,
    controller_port: int,
    partitions: int,
    advertised_port: int | None = None,
    *,
    node_id: int = 1,
    quorum: str | None = None,
    replication: int = 1,
    min_insync_replicas: int = 1,
) -> str:
    """A combined broker+controller config; by default one node, every replication factor 1.

    `advertised_port` (default: `port`) is the port clients are told to reconnect to, e.g. a
    TCP proxy in front of the listener: clients follow the metadata, not the bootstrap address.
    In a cluster, `quorum` lists every controller (host:port,...; default: this node's), and
    `replication` and `min_insync_replicas` apply to new topics and to the internal ones.
    """
    return f"""\
process.roles=broker,controller
node.id={node_id}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{advertised_port or port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers={quorum or f"127.0.0.1:{controller_port}"}
log.dirs={data_dir}
num.partitions={partitions}
default.replication.factor={replication}
min.insync.replicas={min_insync_replicas}
offsets.topic.replication.factor={replication}
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_insync_replicas}
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_insync_replicas}
# Fewer internal partitions: the first consumer group / transaction creates them, and 50 of
# each (the default) costs seconds on a test machine.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
# Consumers join at once instead of after the default 3 s wait for more members.
group.initial.rebalance.delay.ms=0
# Topics are created explicitly (by the app or the test), so a typo does not make a topic.
auto.create.topics.enable=false
"""


def _cluster_id() -> str:
    """A random Kafka Uuid string (base64url of 16 bytes, as `kafka-storage random-uuid`)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka avoids these too: they parse as CLI flags
            return text


def _java(libs: Path, log_config: Path, *args: str) -> list[str]:
    java = (
        str(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
        if "JAVA_HOME" in os.environ
        else (shutil.which("java") or "java")
    )
    # 'libs/*' is expanded by java itself, not by a shell.
    return [
        java,
        *JVM_HEAP,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_config}",
        "-cp",
        f"{libs}/*",
        *args,
    ]


def cluster_id_at(port: int, host: str = "127.0.0.1", timeout_s: float = 2.0) -> str | None:
    """The cluster id a broker on host:port reports once it lists itself, else None."""
    return metadata_at(port, host, timeout_s)[0]


def metadata_at(
    port: int, host: str = "127.0.0.1", timeout_s: float = 2.0
) -> tuple[str | None, int]:
    """(cluster id, brokers listed) from the broker on host:port; (None, 0) if it cannot say.

    A hand-encoded Metadata v4 request for no topics. The client listener only serves
    requests once the broker has caught up with the metadata log and is unfenced, and the
    cluster id tells our broker apart from any other one that already holds the port; the
    brokers listed are the live (unfenced) ones this broker knows of.
    https://kafka.apache.org/protocol#The_Messages_Metadata
    """
    correlation_id, client_id = 1, b"beacon-ready"
    # Request header v1 (api_key=3 Metadata, api_version=4, correlation_id, client_id), then
    # the body: topics = empty array (v1+: "no topics"), allow_auto_topic_creation = false.
    request = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    request += struct.pack(">ib", 0, 0)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            response = _recv_exact(sock, size)
    except OSError:
        return None, 0
    # Response v4: correlation_id, throttle_time_ms, brokers[node_id, host, port, rack],
    # cluster_id, ... (only the fields up to cluster_id are read).
    got_id, _throttle_ms, n_brokers = struct.unpack_from(">iii", response)
    if got_id != correlation_id or n_brokers < 1:
        return None, 0
    offset = 12
    for _ in range(n_brokers):
        offset += 4  # node_id
        (host_len,) = struct.unpack_from(">h", response, offset)
        offset += 2 + host_len + 4  # host, port
        (rack_len,) = struct.unpack_from(">h", response, offset)
        offset += 2 + max(rack_len, 0)  # rack is -1 when null
    (id_len,) = struct.unpack_from(">h", response, offset)
    if id_len < 0:
        return None, n_brokers
    return response[offset + 2 : offset + 2 + id_len].decode(), n_brokers


def _recv_exact(sock: socket.socket, n_bytes: int) -> bytes:
    data = b""
    while len(data) < n_bytes:
        chunk = sock.recv(n_bytes - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # Same option as Java's server sockets, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    """True if pid is a running Kafka broker (not a zombie, not a reused pid)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    except ChildProcessError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def _read_pid(kafka_dir: Path) -> int | None:
    try:
        return int((kafka_dir / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _read_properties(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _log_tail(kafka_dir: Path, n_lines: int = 40) -> str:
    try:
        lines = (kafka_dir / "kafka.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no kafka.log)"
    return "\n".join(lines[-n_lines:])


@dataclass
class Broker:
    """A running broker started by start_broker()."""

    dir: Path
    port: int
    controller_port: int
    pid: int
    process: subprocess.Popen[bytes] | None = None  # kept so stop() reaps our own child
    advertised_port: int | None = None  # where clients are sent, when not `port`

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port or self.port}"

    def stop(self, timeout_s: float = 30.0) -> None:
        stop_broker(self.dir, timeout_s)
        if self.process is not None:
            self.process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would: no controlled shutdown, no final flush."""
        _signal_group(self.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)
        while _pid_alive(self.pid):
            time.sleep(0.05)
        (self.dir / "kafka.pid").unlink(missing_ok=True)


def start_broker(
    kafka_dir: Path | str = DEFAULT_DIR,
    port: int = 9092,
    controller_port: int = 9093,
    partitions: int = 1,
    ready_timeout_s: float = 120.0,
    cache: Path | None = None,
    advertised_port: int | None = None,
) -> Broker:
    """Fetch, format (once) and start a broker in kafka_dir; return once it answers.

    With `advertised_port`, clients are told to connect there (see server_properties)."""
    kafka_dir = Path(kafka_dir).resolve()
    kafka_dir.mkdir(parents=True, exist_ok=True)
    running = _running(kafka_dir)
    if running is not None:
        # `up` twice is fine: answer with the running broker, on the ports it was started with.
        _wait_ready(kafka_dir, running.port, running.pid, None, ready_timeout_s)
        return running

    _check_free([port, controller_port])
    libs = fetch(cache)
    config = server_properties(
        kafka_dir / "data", port, controller_port, partitions, advertised_port
    )
    _write_config(kafka_dir, config)
    if not _formatted(kafka_dir):
        # --standalone makes this node the sole KRaft voter (KIP-853 dynamic quorum).
        _format(libs, kafka_dir, _cluster_id(), "--standalone")
    process = _launch(libs, kafka_dir)
    try:
        _wait_ready(kafka_dir, port, process.pid, process, ready_timeout_s)
    except BaseException:
        stop_broker(kafka_dir)  # never leave a half-started JVM behind
        process.wait(timeout=5)
        raise
    return Broker(kafka_dir, port, controller_port, process.pid, process, advertised_port)


@dataclass
class Cluster:
    """Brokers started together by start_cluster(): every node a broker and a KRaft voter."""

    dir: Path
    brokers: list[Broker]

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated (clients take any that answers)."""
        return ",".join(broker.bootstrap for broker in self.brokers)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every node still running (all at once; see stop_brokers)."""
        stop_brokers([broker.dir for broker in self.brokers], timeout_s)
        for broker in self.brokers:
            if broker.process is not None:
                broker.process.wait(timeout=5)


def node_ports(port: int, controller_port: int, nodes: int) -> list[tuple[int, int]]:
    """(client port, controller port) per node: the pair given, each next node 2 higher."""
    ports = [(port + 2 * i, controller_port + 2 * i) for i in range(nodes)]
    if len({p for pair in ports for p in pair}) != 2 * nodes:
        raise BrokerError(f"ports {port} and {controller_port} overlap across {nodes} nodes")
    return ports


def start_cluster(
    kafka_dir: Path | str,
    ports: Sequence[tuple[int, int]],
    partitions: int = 1,
    ready_timeout_s: float = 120.0,
    cache: Path | None = None,
    min_insync_replicas: int | None = None,
) -> Cluster:
    """Fetch, format (once) and start one node per (port, controller_port) pair, in
    kafka_dir/node-<id>; return once every node answers and lists all of them.

    Every node is a broker and a voter of the metadata quorum (KIP-853 dynamic quorum, formatted
    with --initial-controllers). New and internal topics get min(3, nodes) replicas and
    `min_insync_replicas` (default: one fewer than the replicas, at least 1), so with three
    nodes, writes with acks=all go on after one node is lost, and stop after two.
    """
    kafka_dir = Path(kafka_dir).resolve()
    dirs = [kafka_dir / f"node-{node_id}" for node_id in range(1, len(ports) + 1)]
    deadline = time.monotonic() + ready_timeout_s
    running = [_running(node_dir) for node_dir in dirs]
    if all(running):
        brokers = [broker for broker in running if broker is not None]
        for broker in brokers:
            _wait_ready(broker.dir, broker.port, broker.pid, None, ready_timeout_s, len(dirs))
        return Cluster(kafka_dir, brokers)
    if any(running):
        raise BrokerError(f"part of the cluster in {kafka_dir} is running: stop it first (down)")

    _check_free([p for pair in ports for p in pair])
    libs = fetch(cache)
    _configure_cluster(libs, dirs, ports, partitions, min_insync_replicas)

    brokers: list[Broker] = []
    try:
        # Every node first, then wait: one voter alone has no quorum and is never ready.
        for node_dir, (port, controller_port) in zip(dirs, ports, strict=True):
            process = _launch(libs, node_dir)
            brokers.append(Broker(node_dir, port, controller_port, process.pid, process))
        for broker in brokers:
            left_s = max(0.1, deadline - time.monotonic())
            _wait_ready(broker.dir, broker.port, broker.pid, broker.process, left_s, len(dirs))
    except BaseException:
        stop_brokers(dirs)  # never leave half a cluster behind
        for broker in brokers:
            if broker.process is not None:
                broker.process.wait(timeout=5)
        raise
    return Cluster(kafka_dir, brokers)


def _configure_cluster(
    libs: Path,
    dirs: Sequence[Path],
    ports: Sequence[tuple[int, int]],
    partitions: int,
    min_insync_replicas: int | None,
) -> None:
    """Write each node's config and format its log dir (unless every one is formatted)."""
    replication = min(3, len(ports))
    min_isr = max(1, replication - 1) if min_insync_replicas is None else min_insync_replicas
    quorum = ",".join(f"127.0.0.1:{controller_port}" for _, controller_port in ports)
    nodes = enumerate(zip(dirs, ports, strict=True), 1)
    for node_id, (node_dir, (port, controller_port)) in nodes:
        node_dir.mkdir(parents=True, exist_ok=True)
        config = server_properties(
            node_dir / "data",
            port,
            controller_port,
            partitions,
            node_id=node_id,
            quorum=quorum,
            replication=replication,
            min_insync_replicas=min_isr,
        )
        _write_config(node_dir, config)
    formatted = [_formatted(node_dir) for node_dir in dirs]
    if all(formatted):
        return
    if any(formatted):
        raise BrokerError(f"only some nodes in {dirs[0].parent} are formatted: remove it")
    # The same voters for every node: id@host:port:<the id of its metadata log directory>.
    voters = ",".join(
        f"{node_id}@127.0.0.1:{controller_port}:{_cluster_id()}"
        for node_id, (_, controller_port) in enumerate(ports, 1)
    )
    cluster_id = _cluster_id()
    for node_dir in dirs:
        _format(libs, node_dir, cluster_id, "--initial-controllers", voters)


def _running(kafka_dir: Path) -> Broker | None:
    """The broker an earlier start left running in kafka_dir, with its ports, else None."""
    pid = _read_pid(kafka_dir)
    if pid is None or not _pid_alive(pid):
        return None
    config = _read_properties(kafka_dir / "server.properties")
    listeners = _listener_ports(config["listeners"])
    advertised = _listener_ports(config["advertised.listeners"])["PLAINTEXT"]
    port, controller_port = listeners["PLAINTEXT"], listeners["CONTROLLER"]
    return Broker(kafka_dir, port, controller_port, pid, None, advertised)


def _listener_ports(listeners: str) -> dict[str, int]:
    """Ports by listener name: PLAINTEXT://127.0.0.1:9092,... -> {"PLAINTEXT": 9092, ...}."""
    pairs = (item.split("://", 1) for item in listeners.split(","))
    return {name.strip(): int(address.rsplit(":", 1)[1]) for name, address in pairs}


def _check_free(ports: Iterable[int]) -> None:
    taken = [p for p in ports if not _port_free(p)]
    if taken:  # a clear message now beats a bind error buried in kafka.log
        raise BrokerError(f"127.0.0.1:{taken[0]} is already in use (another broker?)")


def _write_config(kafka_dir: Path, config: str) -> None:
    (kafka_dir / "server.properties").write_text(config)
    (kafka_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)


def _formatted(kafka_dir: Path) -> bool:
    return (kafka_dir / "data" / "meta.properties").exists()


def _format(libs: Path, kafka_dir: Path, cluster_id: str, *quorum: str) -> None:
    """Format kafka_dir's log dir for cluster_id; `quorum` says who the first voters are."""
    props, log_config = kafka_dir / "server.properties", kafka_dir / "log4j2.properties"
    cmd = _java(
        libs, log_config, "kafka.tools.StorageTool", "format", *quorum, "-t", cluster_id,
        "-c", str(props),
    )  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerError(f"storage format failed in {kafka_dir}:\n{done.stdout}{done.stderr}")


def _launch(libs: Path, kafka_dir: Path) -> subprocess.Popen[bytes]:
    """Start the broker of kafka_dir (its log in kafka.log, its pid in kafka.pid)."""
    props, log_config = kafka_dir / "server.properties", kafka_dir / "log4j2.properties"
    with open(kafka_dir / "kafka.log", "ab") as log:
        # Own session/process group: the broker outlives `up`, and Ctrl-C in the calling
        # terminal does not reach it; `down` signals the whole group.
        process = subprocess.Popen(
            _java(libs, log_config, "kafka.Kafka", str(props)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=kafka_dir,
            start_new_session=True,
        )
    (kafka_dir / "kafka.pid").write_text(f"{process.pid}\n")
    return process


def _wait_ready(
    kafka_dir: Path,
    port: int,
    pid: int,
    process: subprocess.Popen[bytes] | None,
    timeout_s: float,
    brokers: int = 1,
) -> None:
    """Until the broker answers with its own cluster id and lists `brokers` live brokers."""
    cluster_id = _read_properties(kafka_dir / "data" / "meta.properties")["cluster.id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Check the process first: another broker already on this port would answer too.
        exited = process.poll() is not None if process is not None else not _pid_alive(pid)
        if exited:
            raise BrokerError(
                f"broker exited during startup; tail of {kafka_dir}/kafka.log:\n"
                f"{_log_tail(kafka_dir)}"
            )
        answered_id, listed = metadata_at(port)
        if answered_id == cluster_id and listed >= brokers:
            return
        time.sleep(0.2)
    raise BrokerError(
        f"broker not ready on 127.0.0.1:{port} after {timeout_s:g} s; "
        f"tail of {kafka_dir}/kafka.log:\n{_log_tail(kafka_dir)}"
    )


def stop_broker(kafka_dir: Path | str = DEFAULT_DIR, timeout_s: float = 30.0) -> bool:
    """SIGTERM the broker of kafka_dir, SIGKILL after timeout_s; False if none was running."""
    return stop_brokers([Path(kafka_dir)], timeout_s) > 0


def stop_cluster(kafka_dir: Path | str = DEFAULT_DIR, timeout_s: float = 30.0) -> int:
    """Stop every node of the cluster in kafka_dir (node-*); how many were running."""
    return stop_brokers(sorted(Path(kafka_dir).glob("node-*")), timeout_s)


def stop_brokers(kafka_dirs: Iterable[Path], timeout_s: float = 30.0) -> int:
    """SIGTERM the brokers of kafka_dirs together, SIGKILL those left after timeout_s; how
    many were running. Together: a cluster's last node would otherwise wait in its controlled
    shutdown for a quorum that the earlier stops had already taken away."""
    running: dict[Path, int] = {}
    for kafka_dir in map(Path, kafka_dirs):
        pid = _read_pid(kafka_dir)
        if pid is not None and _pid_alive(pid):
            running[kafka_dir] = pid
        else:
            (kafka_dir / "kafka.pid").unlink(missing_ok=True)
    # SIGTERM lets Kafka shut down cleanly, so the next start skips log recovery.
    for pid in running.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(map(_pid_alive, running.values())) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in running.values():
        if _pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.05)
    for kafka_dir in running:
        (kafka_dir / "kafka.pid").unlink(missing_ok=True)
    return len(running)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # pid leads its own group (start_new_session)
    except ProcessLookupError:  # it exited just now
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the broker and wait until it answers")
    up.add_argument("--port", type=int, default=9092)
    up.add_argument("--controller-port", type=int, default=9093)
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    up.add_argument("--partitions", type=int, default=1, help="num.partitions default")
    up.add_argument("--timeout-s", type=float, default=120.0, help="readiness timeout")
    up.add_argument("--nodes", type=int, default=1, help="brokers in one KRaft cluster")
    down = sub.add_parser("down", help="stop the broker (idempotent)")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    sub.add_parser("fetch", help="only download the jars")
    args = parser.parse_args(argv)

    cache = cache_dir(os.environ)
    started = time.monotonic()
    try:
        if args.command == "fetch":
            print(f"jars in {fetch(cache)} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
        elif args.command == "up":
            if args.nodes > 1:
                ports = node_ports(args.port, args.controller_port, args.nodes)
                running: Broker | Cluster = start_cluster(
                    args.dir, ports, args.partitions, args.timeout_s, cache
                )
                pids = ",".join(str(b.pid) for b in running.brokers)
            else:
                running = start_broker(
                    args.dir,
                    args.port,
                    args.controller_port,
                    args.partitions,
                    args.timeout_s,
                    cache,
                )
                pids = str(running.pid)
            print(
                f"kafka {kafka_version()} ready in {time.monotonic() - started:.1f} s, "
                f"pid {pids}, dir {running.dir}",
                file=sys.stderr,
            )
            print(running.bootstrap)
        else:
            stopped = stop_broker(args.dir) + stop_cluster(args.dir)
            print(f"stopped {stopped}" if stopped else "not running", file=sys.stderr)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
