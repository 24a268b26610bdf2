"""`beacon dashboard` as the deploy files run it: the compose service and the Kubernetes
Deployment, each started with its own command and environment (and the image's, from the
Dockerfile) in a process without chdb, as in the image, against a ClickHouse HTTP front on
chDB holding a few events. Its health check answers, the page is shut without the token and
open with it, and its figures come from ClickHouse through read-only reads. Also: an unedited
example overlay's dashboard refuses to start on each placeholder of the Secret it gets."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from analytics.settings import StoreSettings
from beacon.__main__ import parser
from tests.integration.test_deploy import DEPLOY, compose
from tests.integration.test_deploy_k8s import beacon_on_path, container_env, rendered
from tests.support.clickhouse_front import ClickHouseFront
from tests.support.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
TOKEN = "deploy-test-dashboard-token-0123"
CAMPAIGN = "deploy-check"
OPENS = 12


def image_env() -> dict[str, str]:
    """The BEACON_* variables the Dockerfile's ENV sets in the image (its last stage)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.split("\nFROM ")[-1].splitlines():
        if line.startswith("ENV "):
            env |= dict(re.findall(r"(BEACON_\w+)=(\S+)", line))
    return env


def listens_on(env: dict[str, str]) -> tuple[str, str]:
    """Where `beacon dashboard` listens with `env` (the settings' defaults where unset)."""
    settings = StoreSettings.from_env(env)
    return settings.dashboard_host, str(settings.dashboard_port)


def compose_defaults(environment: dict[str, Any]) -> dict[str, str]:
    """A service's environment as `make up` gives it with nothing set: ${VAR:-default}."""
    resolved = {}
    for name, value in environment.items():
        text = str(value)
        text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
        assert "$" not in text, (name, value)
        resolved[name] = text
    return resolved


async def seeded_front(front: ClickHouseFront) -> None:
    """Beacon's schema (the consumers' migrations) and a few opens of one campaign today."""
    from analytics.migrations import migrate
    from analytics.store.http import HttpWriter

    writer = HttpWriter(front.url, user=front.user, password=front.password)
    await migrate(writer, retention_days=0)
    await writer.close()
    front.run(
        "INSERT INTO beacon.events (event_id, received_at, event_type, site, campaign, "
        "recipient, inserted_at) SELECT generateUUIDv4(), now64(3, 'UTC') - toIntervalMinute("
        f"number + 1), 'open', 'shop', '{CAMPAIGN}', concat('r', toString(number)), now() "
        f"FROM numbers({OPENS})"
    )


@contextlib.asynccontextmanager
async def dashboard_process(cmd: list[str], env: dict[str, str]) -> AsyncIterator[str]:
    """`cmd` running with `env` (which names the port), until it answers /healthz: its URL.
    SIGTERM after; it must exit 0."""
    port = env["BEACON_DASHBOARD_PORT"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # until it listens, or the process has ended
                assert proc.returncode is None, (await proc.communicate())[1].decode()[-3000:]
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the dashboard never answered /healthz")
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-3000:]


async def check_the_page(
    base: str, front: ClickHouseFront, token: str, metrics_path: str = "/metrics"
) -> None:
    """Shut without the token; with it, the page and the figures, read from the front (which
    refuses any user and password but the deploy's); each read counted on the path Prometheus
    scrapes."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/dashboard") as response:
            assert response.status == 401
        async with http.get(f"{base}/dashboard/data.json") as response:
            assert response.status == 401
        seen = len(front.seen)
        bearer = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{base}/dashboard?days=7", headers=bearer) as response:
            assert response.status == 200, await response.text()
        async with http.get(f"{base}/dashboard/data.json?days=7", headers=bearer) as response:
            assert response.status == 200, await response.text()
            data = await response.json()
        async with http.get(f"{base}{metrics_path}") as response:
            assert response.status == 200
            metrics = await response.text()
    assert data["totals"]["opens"] == OPENS
    assert CAMPAIGN in str(data)
    # Every read reached ClickHouse as a read-only query (analytics/store/readers.py).
    reads = front.seen[seen:]
    assert reads and all(r.params.get("readonly") == "1" for r in reads)
    for endpoint in ("page", "data"):
        for outcome in ("ok", "unauthorized"):
            line = f'beacon_dashboard_reads_total{{endpoint="{endpoint}",outcome="{outcome}"}} 1.0'
            assert line in metrics, line


def run_healthcheck(test: list[str], port: str, env: dict[str, str]) -> None:
    """A compose healthcheck's CMD, on the port the test's process listens on."""
    assert test[0] == "CMD"
    cmd = [sys.executable if c == "python" else c.replace(":8125/", f":{port}/") for c in test[1:]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def listen_on_loopback(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The deploy's environment on a free loopback port, with a data directory that cannot
    be made, even by root (the image's root filesystem is read-only, and the dashboard mounts
    no data volume)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    data = blocker / "data"
    return env | {
        "PATH": f"{beacon_on_path(tmp_path)}:/usr/bin:/bin",
        "BEACON_DASHBOARD_HOST": "127.0.0.1",
        "BEACON_DASHBOARD_PORT": str(free_port()),
        "BEACON_DATA_DIR": str(data),
    }


# -- Compose ---------------------------------------------------------------------------------------


async def test_the_compose_dashboard_serves_the_page_from_clickhouse(tmp_path: Path) -> None:
    services = compose()["services"]
    service = services["dashboard"]
    image = image_env()
    env = compose_defaults(service["environment"])
    # Inside the container it listens on every address, on the port published on loopback.
    (published,) = service["ports"]
    host_ip, _, container_port = published.split(":")
    assert host_ip == "127.0.0.1"
    assert listens_on(image | env) == ("0.0.0.0", container_port)
    assert f":{container_port}/healthz" in " ".join(service["healthcheck"]["test"])
    # The compose ClickHouse, which knows the user and password its own service sets.
    assert env["BEACON_CLICKHOUSE_URL"] == "http://clickhouse:8123"
    assert "127.0.0.1:8123:8123" in services["clickhouse"]["ports"]
    server = compose_defaults(services["clickhouse"]["environment"])
    user, password = server["CLICKHOUSE_USER"], server["CLICKHOUSE_PASSWORD"]
    async with ClickHouseFront(tmp_path / "ch", user=user, password=password) as front:
        await seeded_front(front)
        env = listen_on_loopback(image | env, tmp_path) | {"BEACON_CLICKHOUSE_URL": front.url}
        cmd = ["beacon", *service["command"]]  # the image's entrypoint, then the command
        async with dashboard_process(cmd, env) as base:
            await asyncio.to_thread(
                run_healthcheck, service["healthcheck"]["test"], env["BEACON_DASHBOARD_PORT"], env
            )
            await check_the_page(base, front, env["BEACON_DASHBOARD_TOKEN"])
    # Prometheus scrapes the dashboard on the port it listens on inside its container.
    jobs = {
        job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    }
    (target,) = jobs["beacon-dashboard"]["static_configs"][0]["targets"]
    assert target == f"dashboard:{container_port}"


# -- Kubernetes ------------------------------------------------------------------------------------


def dashboard_container(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (container,) = docs["Deployment", "beacon-dashboard"]["spec"]["template"]["spec"]["containers"]
    return container


async def test_the_kubernetes_dashboard_serves_the_page_from_clickhouse(tmp_path: Path) -> None:
    """The base Deployment's container, its environment from the ConfigMap and the two keys of
    a Secret with real values, its probes on the port it listens on."""
    docs = rendered("base")
    container = dashboard_container(docs)
    assert "command" not in container  # the image's entrypoint: `beacon`
    assert parser().parse_args(container["args"]).command == "dashboard"
    image = image_env()
    password = "front-password-0123"
    docs["Secret", "beacon-secrets"] = {
        "stringData": {"BEACON_DASHBOARD_TOKEN": TOKEN, "BEACON_CLICKHOUSE_PASSWORD": password}
    }
    env = container_env(docs, container)
    (port,) = container["ports"]
    assert listens_on(image | env) == ("0.0.0.0", str(port["containerPort"]))
    user = env["BEACON_CLICKHOUSE_USER"]
    assert env["BEACON_CLICKHOUSE_URL"].startswith("http://")
    assert env["BEACON_DASHBOARD_TOKEN"] == TOKEN
    async with ClickHouseFront(tmp_path / "ch", user=user, password=password) as front:
        await seeded_front(front)
        env = listen_on_loopback(image | env, tmp_path) | {"BEACON_CLICKHOUSE_URL": front.url}
        async with dashboard_process(["beacon", *container["args"]], env) as base:
            async with aiohttp.ClientSession() as http:
                for probe in ("readinessProbe", "livenessProbe"):
                    get = container[probe]["httpGet"]
                    assert get["port"] == port["name"]
                    async with http.get(f"{base}{get['path']}") as response:
                        assert response.status == 200, probe
            annotations = docs["Deployment", "beacon-dashboard"]["spec"]["template"]["metadata"][
                "annotations"
            ]
            assert annotations["prometheus.io/port"] == str(port["containerPort"])
            await check_the_page(base, front, TOKEN, annotations["prometheus.io/path"])


def test_the_example_dashboard_refuses_each_placeholder_of_its_secret(tmp_path: Path) -> None:
    """The example overlay's dashboard container with its Secret as shipped, then with each
    placeholder replaced in turn: it stops at start (status 2) naming the next one, never
    quoting it, until none is left."""
    docs = rendered("overlays/example")
    container = dashboard_container(docs)
    env = container_env(docs, container)
    shipped = {e["name"]: env[e["name"]] for e in container["env"] if "valueFrom" in e}
    assert set(shipped) == {"BEACON_DASHBOARD_TOKEN", "BEACON_CLICKHOUSE_PASSWORD"}
    assert "BEACON_SECRET" not in env and "BEACON_SIGNING_KEYS" not in env
    env |= {"PATH": f"{beacon_on_path(tmp_path)}:/usr/bin:/bin",
            "BEACON_DATA_DIR": str(tmp_path / "data"), "BEACON_DASHBOARD_PORT": "0"}  # fmt: skip
    real = {"BEACON_DASHBOARD_TOKEN": TOKEN, "BEACON_CLICKHOUSE_PASSWORD": "a-real-password"}
    for name in ("BEACON_DASHBOARD_TOKEN", "BEACON_CLICKHOUSE_PASSWORD"):
        done = subprocess.run(["beacon", *container["args"]], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert f"beacon: {name}: a placeholder value" in done.stderr, done.stderr[-2000:]
        assert shipped[name] not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr
        env[name] = real[name]
