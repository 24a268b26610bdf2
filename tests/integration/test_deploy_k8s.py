"""The Kubernetes manifests (deploy/k8s/), rendered with kustomize as a user applies them and
read as the cluster would: the ingress, the Secret's place, the collector pod's disk and
probes, the settle CronJob (run for real against a ClickHouse HTTP front on chDB), and the
optional request-rate HPA component. Nothing here needs a cluster."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from analytics.rollup_settle import SETTLE_AFTER_S
from analytics.rollups import EVENTS_HOURLY
from beacon.__main__ import parser
from collector.app import create_app
from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from consumers.settings import ConsumerSettings
from tests.integration.test_deploy import by_kind, kustomize, run, tool, without_chdb
from tests.support.clickhouse_front import ClickHouseFront

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPONENT = K8S / "components" / "hpa-request-rate"
# Inside the cluster only: probes and scrapes.
PRIVATE_PATHS = {"/healthz", "/readyz", "/metrics"}
DATA_DIR = "/var/lib/beacon"  # BEACON_DATA_DIR in deploy/Dockerfile
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6,
         "G": 10**9}  # fmt: skip


def quantity(text: str | int) -> int:
    """Bytes of a Kubernetes quantity ("1536Mi", "2Gi", "64M", "1073741824")."""
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(text))
    assert match, text
    return int(match.group(1)) * UNITS.get(match.group(2), 1) if match.group(2) else int(text)


def rendered(path: str) -> dict[tuple[str, str], dict[str, Any]]:
    return by_kind(kustomize(K8S / path))


def collector_container(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (container,) = docs["Deployment", "beacon-collector"]["spec"]["template"]["spec"]["containers"]
    return container


def workload_pods(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod spec of every Deployment and CronJob, by kind/name."""
    pods = {}
    for (kind, name), doc in docs.items():
        if kind == "Deployment":
            pods[f"{kind}/{name}"] = doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            pods[f"{kind}/{name}"] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pods


async def public_paths() -> set[str]:
    """The routes collector/app.py serves, less the ones that stay inside the cluster."""
    settings = Settings(secret="k8s-test-secret-0123", sink="memory")
    app = create_app(settings, MemorySink(), CollectorMetrics(CollectorRegistry()))
    paths = {r.canonical for r in app.router.resources()} - {"/{tail}"}
    assert PRIVATE_PATHS <= paths
    return paths - PRIVATE_PATHS


# -- Ingress ---------------------------------------------------------------------------------------


async def test_the_ingress_routes_every_public_endpoint_and_nothing_else() -> None:
    docs = rendered("overlays/example")
    ingresses = {name: doc for (kind, name), doc in docs.items() if kind == "Ingress"}
    routes = {}
    for name, ingress in ingresses.items():
        assert ingress["spec"]["ingressClassName"] == "nginx"
        for rule in ingress["spec"]["rules"]:
            assert rule["host"] == "t.example.com"
            for path in rule["http"]["paths"]:
                assert path["path"] not in routes, path["path"]
                routes[path["path"]] = (name, path)
    public = {"/p.gif", "/e", "/c", "/t.js", "/a.js", "/robots.txt"}
    assert set(routes) == await public_paths() == public
    pods = docs["Deployment", "beacon-collector"]["spec"]["template"]["metadata"]["labels"]
    # The dashboard is not public: no route reaches it (docs/operations.md, Kubernetes).
    assert docs["Service", "beacon-dashboard"]
    assert all(r["backend"]["service"]["name"] != "beacon-dashboard" for _, r in routes.values())
    for path, (_, route) in routes.items():
        assert route["pathType"] == "Exact", path  # "/c" as a Prefix would take "/c/anything"
        backend = route["backend"]["service"]
        service = docs["Service", backend["name"]]["spec"]
        assert service["selector"].items() <= pods.items(), path
        assert backend["port"]["name"] in {p["name"] for p in service["ports"]}
    # Pixels get upstream connections of their own, so they reach the collectors' fast path
    # (docs/performance.md): ingress-nginx pools keep-alive connections by address, so /p.gif
    # goes to a Service of its own by its cluster IP (service-upstream), the rest to the pods.
    pixel_ingress, pixel = routes.pop("/p.gif")
    others = {route["backend"]["service"]["name"] for _, route in routes.values()}
    assert others == {"beacon-collector"}
    assert pixel["backend"]["service"]["name"] == "beacon-collector-pixel"
    upstream = "nginx.ingress.kubernetes.io/service-upstream"
    assert ingresses[pixel_ingress]["metadata"]["annotations"][upstream] == "true"
    for name, _ in routes.values():
        assert name != pixel_ingress
        assert upstream not in ingresses[name]["metadata"].get("annotations", {})


def test_only_prometheus_may_connect_to_the_dashboard_in_the_example() -> None:
    """Its NetworkPolicy selects the dashboard pods alone and lets in the monitoring namespace
    on the port of the pods' scrape annotation, nothing else: `kubectl port-forward` and the
    kubelet's probes are not pod traffic and still reach it."""
    docs = rendered("overlays/example")
    policies = [doc for (kind, _), doc in docs.items() if kind == "NetworkPolicy"]
    labels = {name: docs["Deployment", name]["spec"]["template"]["metadata"]["labels"]
              for name in ("beacon-collector", "beacon-consumer", "beacon-dashboard")}  # fmt: skip
    selecting = {name: [p["spec"] for p in policies
                        if p["spec"]["podSelector"]["matchLabels"].items() <= pod.items()]
                 for name, pod in labels.items()}  # fmt: skip
    (dashboard,) = selecting["beacon-dashboard"]
    annotations = docs["Deployment", "beacon-dashboard"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    monitoring = {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}  # fmt: skip
    assert dashboard["policyTypes"] == ["Ingress"]
    assert dashboard["ingress"] == [{
        "from": [monitoring],
        "ports": [{"port": int(annotations["prometheus.io/port"]), "protocol": "TCP"}],
    }]  # fmt: skip
    assert dashboard not in selecting["beacon-collector"] + selecting["beacon-consumer"]


# -- The Secret ------------------------------------------------------------------------------------


def secret_refs(pod: dict[str, Any]) -> set[str]:
    """The Secrets a pod's containers read, whole (envFrom) or by key (env)."""
    containers = pod.get("initContainers", []) + pod["containers"]
    whole = {source["secretRef"]["name"] for container in containers
             for source in container.get("envFrom", []) if "secretRef" in source}  # fmt: skip
    by_key = {item["valueFrom"]["secretKeyRef"]["name"] for container in containers
              for item in container.get("env", [])
              if "secretKeyRef" in item.get("valueFrom", {})}  # fmt: skip
    return whole | by_key


def test_the_base_references_the_secret_and_only_the_overlay_makes_it() -> None:
    base = rendered("base")
    assert not [key for key in base if key[0] == "Secret"], "base must not make the Secret"
    pods = workload_pods(base)
    for name in ("Deployment/beacon-collector", "Deployment/beacon-consumer",
                 "Deployment/beacon-dashboard", "CronJob/beacon-settle"):  # fmt: skip
        assert secret_refs(pods[name]) == {"beacon-secrets"}, name
    example = rendered("overlays/example")
    secrets = [doc for (kind, _), doc in example.items() if kind == "Secret"]
    (secret,) = secrets
    assert secret["metadata"]["name"].startswith("beacon-secrets")
    for name, pod in workload_pods(example).items():
        assert secret_refs(pod) <= {secret["metadata"]["name"]}, name
    # Every key a pod reads from it is there (a missing one stops the pod before Beacon starts).
    keys = set(secret.get("data", {})) | set(secret.get("stringData", {}))
    for name, pod in workload_pods(example).items():
        for container in pod["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in keys, (name, ref["key"])


def container_env(docs: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]) -> dict:
    """What a container's envFrom and env give it, as rendered: its ConfigMaps and Secrets,
    whole or by key, then its own values (env wins over envFrom, as in a pod)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= docs["ConfigMap", source["configMapRef"]["name"]]["data"]
        else:
            secret = docs["Secret", source["secretRef"]["name"]]
            env |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
            env |= secret.get("stringData", {})
    for item in container.get("env", []):  # a value, or one key of a Secret or ConfigMap
        ref = item.get("valueFrom", {})
        if "secretKeyRef" in ref:
            secret = docs["Secret", ref["secretKeyRef"]["name"]]
            key = ref["secretKeyRef"]["key"]
            data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
            env[item["name"]] = (data | secret.get("stringData", {}))[key]
        elif "configMapKeyRef" in ref:
            config = docs["ConfigMap", ref["configMapKeyRef"]["name"]]["data"]
            env[item["name"]] = config[ref["configMapKeyRef"]["key"]]
        else:
            env[item["name"]] = item["value"]
    return env


def beacon_on_path(tmp_path: Path) -> Path:
    """A directory with `beacon` as the image has it: its console script, without chdb."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "beacon"
    stub.write_text(f'#!/bin/sh\nexec {sys.executable} -c "{without_chdb()[2]}" "$@"\n')
    stub.chmod(0o755)
    return bin_dir


def test_an_unedited_example_deploy_refuses_to_start(tmp_path: Path) -> None:
    """Every container of the example overlay that gets the Secret, run with its command,
    args and environment as rendered: each stops at start naming the placeholder (status 2
    from `beacon`), so a deploy nobody edited fails loudly instead of running on a public key.
    (The consumers' kafka-init container gets no Secret: it makes the topics, then the
    consumer container stops. The dashboard gets two keys, not BEACON_SECRET: it names its
    token; tests/integration/test_deploy_dashboard.py takes its placeholders one by one.)"""
    docs = rendered("overlays/example")
    checked = []
    for name, pod in workload_pods(docs).items():
        for container in pod.get("initContainers", []) + pod["containers"]:
            if not secret_refs({"containers": [container]}):
                continue
            checked.append(f"{name}/{container['name']}")
            env = container_env(docs, container)
            variable = "BEACON_SECRET" if "BEACON_SECRET" in env else "BEACON_DASHBOARD_TOKEN"
            secret = env[variable]
            env |= {"PATH": f"{beacon_on_path(tmp_path)}:/usr/bin:/bin",
                    "BEACON_DATA_DIR": str(tmp_path / "data"), "BEACON_PORT": "0"}  # fmt: skip
            cmd = [*container["command"], *container["args"]] if "command" in container else (
                ["beacon", *container["args"]])  # fmt: skip
            done = subprocess.run(
                cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
            )
            assert done.returncode != 0, (name, done.stderr[-2000:])
            if "command" not in container:  # beacon itself (a shell loop exits 1)
                assert done.returncode == 2, (name, done.stderr[-2000:])
            assert f"beacon: {variable}: a placeholder value" in done.stderr, name
            assert secret not in done.stderr + done.stdout  # named, never quoted
            assert "Traceback" not in done.stderr, name
    assert set(checked) == {
        "Deployment/beacon-collector/collector",
        "Deployment/beacon-consumer/consumer",
        "Deployment/beacon-dashboard/dashboard",
        "CronJob/beacon-settle/settle",
    }


# -- Every workload --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["base", "overlays/example"])
def test_every_workload_runs_locked_down(path: str) -> None:
    """Each pod as the image's uid (deploy/Dockerfile), with no service account token; each
    container on a read-only root filesystem, without privileges, with its resources."""
    uid = re.search(r"^USER (\d+):(\d+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert uid
    pods = workload_pods(rendered(path))
    assert set(pods) == {"Deployment/beacon-collector", "Deployment/beacon-consumer",
                         "Deployment/beacon-dashboard", "CronJob/beacon-settle"}  # fmt: skip
    for name, pod in pods.items():
        assert pod["automountServiceAccountToken"] is False, name
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert (str(context["runAsUser"]), str(context["runAsGroup"])) == uid.groups(), name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, where
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
            assert resources["limits"]["memory"], where


# -- The collector pod -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["base", "overlays/example"])
def test_the_collector_pod_requests_the_disk_its_spool_may_fill(path: str) -> None:
    docs = rendered(path)
    spool_max = int(docs["ConfigMap", "beacon-config"]["data"]["BEACON_SPOOL_MAX_BYTES"])
    assert (
        spool_max == Settings.from_env({"BEACON_SPOOL_MAX_BYTES": str(spool_max)}).spool_max_bytes
    )
    pod = docs["Deployment", "beacon-collector"]["spec"]["template"]["spec"]
    container = collector_container(docs)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == DATA_DIR]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "medium" not in volume["emptyDir"], "the spool belongs on disk, not in memory"
    size_limit = quantity(volume["emptyDir"]["sizeLimit"])
    # Room for a full spool and the segment being written when it filled.
    assert size_limit >= spool_max + Settings().spool_segment_max_bytes
    resources = container["resources"]
    requested = quantity(resources["requests"]["ephemeral-storage"])
    limit = quantity(resources["limits"]["ephemeral-storage"])
    # Requested (the kubelet evicts pods over their request first, under disk pressure: just
    # while they spool), and the volume's limit fits in it with room for the logs.
    assert requested >= spool_max and requested > size_limit and limit >= requested


@pytest.mark.parametrize("path", ["base", "overlays/example"])
def test_probes_survive_a_busy_event_loop(path: str) -> None:
    container = collector_container(rendered(path))
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["httpGet"]["path"] == "/readyz" and live["httpGet"]["path"] == "/healthz"
    # The loop that answers probes answers pixels too: a burst delays the probe's answer.
    assert ready["timeoutSeconds"] >= 5 and ready.get("failureThreshold", 3) >= 3
    assert ready["periodSeconds"] >= ready["timeoutSeconds"]
    # Liveness is the last resort: slower to give up than readiness, a minute at least.
    assert live["timeoutSeconds"] >= ready["timeoutSeconds"]
    ready_window = ready["periodSeconds"] * ready.get("failureThreshold", 3)
    live_window = live["periodSeconds"] * live.get("failureThreshold", 3)
    assert live_window >= max(60, 2 * ready_window)


# -- The settle CronJob ----------------------------------------------------------------------------


def settle_cronjob(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return docs["CronJob", "beacon-settle"]


def test_the_settle_cronjob_runs_beacon_settle_daily_after_midnight_utc() -> None:
    for path in ("base", "overlays/example"):
        docs = rendered(path)
        job = settle_cronjob(docs)
        spec = job["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", path
        assert spec["timeZone"] in ("Etc/UTC", "UTC"), path
        minute, hour, *rest = spec["schedule"].split()
        assert rest == ["*", "*", "*"], spec["schedule"]  # daily
        # After midnight UTC, once the day just ended is due (SETTLE_AFTER_S after its end).
        assert int(hour) * 3600 + int(minute) * 60 >= SETTLE_AFTER_S
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        collector = collector_container(docs)
        assert container["image"] == collector["image"], path  # the same image
        consumer = docs["Deployment", "beacon-consumer"]["spec"]["template"]["spec"]
        assert container["envFrom"] == consumer["containers"][0]["envFrom"], path
        assert pod["restartPolicy"] in ("Never", "OnFailure")
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    base = settle_cronjob(rendered("base"))["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = base["containers"]
    assert "command" not in container  # the image's entrypoint: `beacon`
    args = parser().parse_args(container["args"])
    assert args.command == "settle" and not args.all and not args.day and not args.local


async def test_the_settle_cronjob_settles_a_closed_day(tmp_path: Path) -> None:
    """The base CronJob's container (`beacon settle`, in a process without chdb as in the
    image) against a ClickHouse HTTP front: a day two days back goes from live to settled."""
    from analytics.migrations import migrate
    from analytics.store.http import HttpWriter

    password = "front-password-0123"
    async with ClickHouseFront(tmp_path / "ch", user="beacon", password=password) as front:
        writer = HttpWriter(front.url, user="beacon", password=password)
        await migrate(writer, retention_days=0)
        await writer.close()
        day = front.run("SELECT toString(today() - 2)").strip()
        front.run(
            "INSERT INTO beacon.events (event_id, received_at, event_type, site, inserted_at) "
            f"SELECT generateUUIDv4(), toDateTime64('{day} 10:00:00', 3, 'UTC') + number, "
            f"'open', 'shop', toDateTime('{day} 10:05:00', 'UTC') FROM numbers(50)"
        )
        in_day = f"FROM {EVENTS_HOURLY.table} WHERE toDate(period) = '{day}'"
        flags = f"SELECT max(live), max(settled) {in_day}"
        assert front.run(flags).split() == ["1", "0"]  # what the view wrote: live rows

        docs = rendered("base")
        (container,) = settle_cronjob(docs)["spec"]["jobTemplate"]["spec"]["template"]["spec"][
            "containers"
        ]
        env = dict(docs["ConfigMap", "beacon-config"]["data"])
        env |= {"PATH": "/usr/bin:/bin", "BEACON_DATA_DIR": str(tmp_path / "data"),
                "BEACON_SECRET": "settle-test-secret-0123", "BEACON_CLICKHOUSE_URL": front.url,
                "BEACON_CLICKHOUSE_PASSWORD": password, "BEACON_SIGNING_KEYS": ""}  # fmt: skip
        done = await run_async(without_chdb(*container["args"]), env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"rollups settled or rebuilt: {day}" in done.stdout
        assert front.run(flags).split() == ["0", "1"]
        assert front.run(f"SELECT sum(events_settled) {in_day}").strip() == "50"
        # A second run finds nothing due.
        again = await run_async(without_chdb(*container["args"]), env)
        assert again.returncode == 0 and "nothing was due" in again.stdout, again.stderr


async def run_async(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A subprocess while this test's event loop keeps serving the front it calls."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())


def test_the_example_runs_in_cluster_mode_and_settles_every_shard_with_the_base_job() -> None:
    """The example overlay is a sharded, replicated ClickHouse: its config turns cluster mode
    on (settling, migrations, retention and erasure ON CLUSTER), so its CronJob is the base's
    plain `beacon settle`, which then does one pass over every shard."""
    docs = rendered("overlays/example")
    pod = settle_cronjob(docs)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["settle"] and "command" not in container
    config = docs["ConfigMap", "beacon-config"]["data"]
    settings = ConsumerSettings.from_env(config)
    assert settings.clickhouse_cluster == "beacon" and settings.clickhouse_url
    assert "BEACON_RETENTION_DAYS" not in config  # cluster mode keeps the TTL on _local tables


# -- The request-rate HPA component ----------------------------------------------------------------


def with_component(tmp_path: Path) -> list[dict[str, Any]]:
    """The example overlay plus the component, from a copy (kustomize takes relative paths)."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    overlay = copy / "overlays" / "hpa"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": ["../example"], "components": ["../../components/hpa-request-rate"]}
        )
    )
    return kustomize(overlay)


def test_the_request_rate_component_renders_validates_and_matches_its_adapter_rule(
    tmp_path: Path,
) -> None:
    docs = with_component(tmp_path)
    rendered_file = tmp_path / "rendered.yaml"
    rendered_file.write_text(yaml.safe_dump_all(docs))
    out = run(tool("kubernetes-validate"), "--strict", rendered_file).stdout
    assert "passed" in out and "failed" not in out.lower()
    hpa = by_kind(docs)["HorizontalPodAutoscaler", "beacon-collector"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(metrics) == {"Resource", "Pods"}  # CPU stays; the request rate is added
    pods = metrics["Pods"]["pods"]
    assert pods["target"] == {"type": "AverageValue", "averageValue": "6000"}

    (rule,) = yaml.safe_load((COMPONENT / "prometheus-adapter-rules.yaml").read_text())["rules"]
    assert rule["name"]["as"] == pods["metric"]["name"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"])
    assert series and re.search(rule["name"]["matches"], series.group(1))
    exported = {f.name + "_total" for f in CollectorMetrics(CollectorRegistry()).registry.collect()
                if f.type == "counter"}  # fmt: skip
    assert series.group(1) in exported
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}  # fmt: skip
    # The query the adapter sends for the collectors of one namespace, checked by promtool.
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series.group(1))
        .replace("<<.LabelMatchers>>", 'namespace="beacon",pod=~"beacon-collector-.*"')
        .replace("<<.GroupBy>>", "pod")
    )
    rules = tmp_path / "adapter_query.yml"
    rules.write_text(yaml.safe_dump(
        {"groups": [{"name": "adapter", "rules": [{"record": "adapter:query", "expr": query}]}]}
    ))  # fmt: skip
    assert "SUCCESS" in run(tool("promtool"), "check", "rules", rules).stdout
    # The example overlay itself leaves it out (it needs prometheus-adapter).
    plain = by_kind(kustomize(K8S / "overlays" / "example"))
    assert [m["type"] for m in plain["HorizontalPodAutoscaler", "beacon-collector"]["spec"][
        "metrics"]] == ["Resource"]  # fmt: skip
