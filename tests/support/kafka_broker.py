"""Throwaway real Kafka broker, or cluster, for integration tests (helpers only, no tests here).

A session fixture in conftest.py can wrap it:

    @pytest.fixture(scope="session")
    def kafka_bootstrap(tmp_path_factory):
        with kafka_broker.broker(tmp_path_factory.mktemp("kafka")) as bootstrap:
            yield bootstrap
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

# deploy/ is not a package (and must not become one just for tests): load the script by path.
KAFKA_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka.py"


def load_kafka_script() -> ModuleType:
    """Import deploy/kafka/kafka.py as a module."""
    spec = importlib.util.spec_from_file_location("beacon_deploy_kafka", KAFKA_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as importlib's recipe does; dataclasses look it up
    spec.loader.exec_module(module)
    return module


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports the kernel says are free now (all held open until chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@contextlib.contextmanager
def broker(tmp_dir: Path | str, ready_timeout_s: float = 120.0) -> Iterator[str]:
    """Start a broker with its data in tmp_dir on free ports; yield "127.0.0.1:PORT"; stop it."""
    kafka = load_kafka_script()
    port, controller_port = free_ports(2)
    running = kafka.start_broker(
        Path(tmp_dir), port, controller_port, ready_timeout_s=ready_timeout_s
    )
    try:
        yield running.bootstrap
    finally:
        running.stop()


@contextlib.contextmanager
def cluster(tmp_dir: Path | str, nodes: int = 3, ready_timeout_s: float = 180.0) -> Iterator[Any]:
    """Start a KRaft cluster of `nodes` brokers (each also a controller) with their data in
    tmp_dir/node-<id> on free ports; yield the running Cluster (its `bootstrap` lists every
    node; its `brokers` can be killed one by one); stop every node left at the end."""
    kafka = load_kafka_script()
    ports = free_ports(2 * nodes)
    pairs = list(zip(ports[::2], ports[1::2], strict=True))
    running = kafka.start_cluster(Path(tmp_dir), pairs, ready_timeout_s=ready_timeout_s)
    try:
        yield running
    finally:
        running.stop()
