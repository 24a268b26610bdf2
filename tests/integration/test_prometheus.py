"""A real Prometheus (Debian's package) scraping a real collector with the shipped configuration.

The scrape jobs of deploy/prometheus/prometheus.yml (compose) and kubernetes.yml (pods) are run
as shipped except for how targets are found: Docker DNS and the Kubernetes API do not exist
here, so each discovery block becomes a static target on loopback. The Kubernetes target
carries the __meta_kubernetes_* labels the collector Deployment's pod template would give it,
so the shipped relabeling (annotation port, path, job name) is what makes the scrape work.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
WINDOW = "10s"  # rate() window: 1 s scrapes leave ten samples in it
POD = "beacon-collector-7d9f8-abcde"


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def pod_meta_labels(manifest: Path) -> dict[str, str]:
    """The __meta_kubernetes_pod_* labels Prometheus's pod discovery makes from a Deployment."""
    deployment = yaml.safe_load(manifest.read_text())
    template = deployment["spec"]["template"]["metadata"]

    def name(key: str) -> str:  # Prometheus turns every unsupported character into "_"
        return re.sub(r"[^a-zA-Z0-9_]", "_", key)

    labels = {f"__meta_kubernetes_pod_label_{name(k)}": v for k, v in template["labels"].items()}
    for key, value in template["annotations"].items():
        labels[f"__meta_kubernetes_pod_annotation_{name(key)}"] = value
    labels |= {
        "__meta_kubernetes_namespace": "beacon",
        "__meta_kubernetes_pod_name": POD,
        "__meta_kubernetes_pod_node_name": "node-1",
        "__meta_kubernetes_pod_phase": "Running",
    }
    return labels


def prometheus_config(collector_port: int) -> dict[str, Any]:
    """The shipped configurations, merged, with discovery swapped for loopback targets."""
    compose = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    kube = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())
    jobs = {job["job_name"]: job for job in compose["scrape_configs"]}
    collector = jobs["beacon-collector"]
    assert collector.pop("dns_sd_configs")[0]["port"] == 8080
    collector["static_configs"] = [{"targets": [f"127.0.0.1:{collector_port}"]}]
    (pods,) = kube["scrape_configs"]
    pods.pop("kubernetes_sd_configs")
    # Port 9 (discard): only the prometheus.io/port annotation can make this scrape work.
    meta = pod_meta_labels(DEPLOY / "k8s" / "base" / "collector-deployment.yaml")
    meta["__meta_kubernetes_pod_annotation_prometheus_io_port"] = str(collector_port)
    pods["static_configs"] = [{"targets": ["127.0.0.1:9"], "labels": meta}]
    for job in (collector, pods):
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"
    return {
        "global": {
            **compose["global"],
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "evaluation_interval": "1s",
        },
        "rule_files": [str(DEPLOY / "prometheus" / name) for name in compose["rule_files"]],
        "scrape_configs": [collector, pods],
    }


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        return data["result"]

    async def wait_for(self, expr: str, timeout_s: float = 60) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a series with a finite value."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = await self.query(expr)
            if result and all(s["value"][1] not in ("NaN", "+Inf", "-Inf") for s in result):
                return result
            assert time.monotonic() < deadline, f"no value for {expr} in {timeout_s} s"
            await asyncio.sleep(0.5)


@pytest.fixture
def collector_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    log = tmp_path / "collector.log"
    env = {**os.environ, "BEACON_SECRET": "prometheus-test-secret", "BEACON_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "beacon", "serve", "--workers", "1", "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*cmd, "--sink", "memory", "--data-dir", str(tmp_path / "data")],
            env=env,
            stdout=out,
            stderr=out,
            cwd=ROOT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc, log)
        yield port
    finally:
        stop(proc)


@pytest.fixture
def prometheus(tmp_path: Path, collector_port: int) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run `make deps` (Debian package prometheus)"
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(collector_port), sort_keys=False))
    port = free_port()
    log = tmp_path / "prometheus.log"
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", 30, proc, log)
        yield Prometheus(port)
    finally:
        stop(proc)


async def send_pixels(port: int, stop_sending: asyncio.Event) -> int:
    """Pixels (and a few junk ones) at a steady pace until told to stop; returns requests made."""
    sent = 0
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        while not stop_sending.is_set() and sent < 20_000:
            for i in range(20):
                query = "e=bogus&s=t" if i == 0 else f"e=open&s=shop&c=spring&r=u{i}"
                async with http.get(f"{base}/p.gif?{query}") as response:
                    assert response.status == 200
                sent += 1
            await asyncio.sleep(0.05)
    return sent


async def test_prometheus_reads_latency_quantile_and_request_rate(
    prometheus: Prometheus, collector_port: int
) -> None:
    compose = 'job="beacon-collector", namespace=""'  # the compose job has no namespace label
    kube = f'job="beacon-collector", namespace="beacon", pod="{POD}", component="collector"'
    stop_sending = asyncio.Event()
    sender = asyncio.create_task(send_pixels(collector_port, stop_sending))
    try:
        for selector in (compose, kube):
            p99 = await prometheus.wait_for(
                "histogram_quantile(0.99, sum by (le) "
                f"(rate(beacon_hot_path_seconds_bucket{{{selector}}}[{WINDOW}])))"
            )
            # The histogram reached Prometheus through this job: a finite quantile (wait_for
            # waits out NaN), above zero. Its size is the machine's, printed, not asserted.
            print(f"pixel hot path p99 via {selector}: {float(p99[0]['value'][1]) * 1000:.2f} ms")
            assert float(p99[0]["value"][1]) > 0
            rate = await prometheus.wait_for(
                f"sum(rate(beacon_requests_total{{{selector}, endpoint='pixel'}}[{WINDOW}]))"
            )
            print(f"pixel requests/s via {selector}: {float(rate[0]['value'][1]):.1f}")
            assert float(rate[0]["value"][1]) > 0
        by_outcome = await prometheus.wait_for(
            f"sum by (outcome) (rate(beacon_requests_total{{{compose}}}[{WINDOW}]))"
        )
        assert {s["metric"]["outcome"] for s in by_outcome} >= {"recorded", "rejected"}
    finally:
        stop_sending.set()
        sent = await sender
    # Every request the collector counted reaches Prometheus, through either job.
    for selector in (compose, kube):
        deadline = time.monotonic() + 15
        while True:
            total = await prometheus.query(f"sum(beacon_requests_total{{{selector}}})")
            if total and int(float(total[0]["value"][1])) == sent:
                break
            assert time.monotonic() < deadline, f"{selector}: {total} != {sent} requests"
            await asyncio.sleep(0.5)
    targets = await prometheus.get("/api/v1/targets")
    health = {t["scrapePool"]: (t["health"], t["labels"]["job"]) for t in targets["activeTargets"]}
    up = ("up", "beacon-collector")
    assert health == {"beacon-collector": up, "beacon-pods": up}, health


async def test_shipped_rules_evaluate_without_errors(prometheus: Prometheus) -> None:
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    wanted = {
        g["name"]: [r.get("alert") or r.get("record") for r in g["rules"]]
        for g in shipped["groups"]
    }
    deadline = time.monotonic() + 30
    while True:
        groups = (await prometheus.get("/api/v1/rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        evaluated = all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
        if rules and evaluated and all(g["lastEvaluation"].startswith("20") for g in groups):
            break
        assert time.monotonic() < deadline, json.dumps(groups)[:3000]
        await asyncio.sleep(0.5)
    assert {g["name"]: [r["name"] for r in g["rules"]] for g in groups} == wanted
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken


async def test_dashboard_queries_evaluate(prometheus: Prometheus, collector_port: int) -> None:
    from tests.support.dashboards import dashboard_promql

    stop_sending = asyncio.Event()
    sender = asyncio.create_task(send_pixels(collector_port, stop_sending))
    try:
        await prometheus.wait_for(f"rate(beacon_requests_total[{WINDOW}])")
        # The hot path's series begins at the first pixel, maybe a scrape after the counters.
        pixels = 'beacon_hot_path_seconds_count{endpoint="pixel"}'
        await prometheus.wait_for(f"rate({pixels}[{WINDOW}])")
        empty = []
        for dashboard, title, expr in dashboard_promql(rate_interval=WINDOW):
            result = await prometheus.query(expr)  # raises on a parse or evaluation error
            if not result:
                empty.append((dashboard, title))
        # A collector with the memory sink has traffic, latency, drops and a buffer to show;
        # consumers, Kafka and the spool are absent here, so their panels may be empty.
        for title in (
            "Requests/s",
            "Pixel hot path p99",
            "Requests/s by endpoint and outcome",
            "Pixel hot path latency",
            "Events dropped/s by reason",
            "Buffered events",
            "Events accepted/s by transport",
        ):
            assert ("collector", title) not in empty, f"collector panel {title!r} is empty"
    finally:
        stop_sending.set()
        await sender
