"""Shared fixtures: real servers on loopback, fresh registries, temp data directories."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from collector.app import create_app
from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from tests.support import kafka_broker


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, secret="test-secret-01234", linger_ms=5, sink="memory")


@pytest.fixture
def metrics() -> CollectorMetrics:
    return CollectorMetrics(CollectorRegistry())


@pytest.fixture
def now() -> dt.datetime:
    """The test's one reading of the clock (UTC): the days and hours of the traffic it makes,
    of the windows it reads and of a settler's noon all come from it, so a run across
    midnight does not make today's traffic on one day and look for it on the next."""
    return dt.datetime.now(dt.UTC)


@pytest.fixture
async def make_client(settings: Settings, metrics: CollectorMetrics):  # type: ignore[no-untyped-def]
    """Start a real collector on loopback: `await make_client(sink=..., **setting_overrides)`."""
    clients: list[TestClient] = []

    async def make(sink=None, **overrides):  # type: ignore[no-untyped-def]
        app = create_app(replace(settings, **overrides), sink or MemorySink(), metrics)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Kafka broker (KRaft, from the Maven jars) for the whole test session."""
    with kafka_broker.broker(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture
async def kafka_topic(kafka_bootstrap: str) -> str:
    """A fresh 3-partition topic per test, so tests never see each other's records."""
    name = f"test.{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    return name


KINDS = ("unit", "integration", "e2e", "faults")  # the folders, one kind of test each
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test is marked by its folder: `pytest -m unit` runs the tier without servers."""
    for item in items:
        kind = item.path.relative_to(TESTS).parts[0]
        if kind in KINDS:
            item.add_marker(kind)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: every test here must run there."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped:
        print(f"\nCI: {skipped} test(s) skipped; skips are failures in CI")
        session.exitstatus = 1
