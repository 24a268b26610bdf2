"""/metrics with several workers: a metrics file another worker has only just made is empty;
the page reads again instead of failing, and never answers 500."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from collector.app import create_app
from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from tests.support.helpers import metric_value


async def test_an_empty_metrics_file_gets_503_not_500_and_is_counted(
    settings: Settings, tmp_path: Path
) -> None:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    metrics = CollectorMetrics(CollectorRegistry(), multiprocess_dir=shared)
    app = create_app(replace(settings, data_dir=tmp_path), MemorySink(), metrics)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        assert (await client.get("/metrics")).status == 200
        (shared / "counter_4242.db").write_bytes(b"")  # made by a worker, not yet filled
        unreadable = await client.get("/metrics")
        assert unreadable.status == 503
        labels = {"endpoint": "metrics", "outcome": "unreadable"}
        assert metric_value(metrics, "beacon_requests_total", **labels) == 1
        (shared / "counter_4242.db").unlink()
        assert (await client.get("/metrics")).status == 200
    finally:
        await client.close()
