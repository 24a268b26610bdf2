"""One measurement: wrk on its own CPU against a server, and what the server's metrics say."""

from __future__ import annotations

import json
import math
import subprocess
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from loadtest.bench.system import pin_to

WRK_SCRIPT = Path(__file__).resolve().parents[1] / "wrk" / "report.lua"
MARKER = "BENCH-JSON "
# An email open as a mail client sends it: every server gets the same request.
PIXEL_PATH = "/p.gif?e=open&s=shop&c=spring-sale&m=m-1042&r=u-77"


def run_wrk(base: str, connections: int, duration_s: int, cpu: int | None) -> dict:
    """One wrk thread, keep-alive, `connections` connections for `duration_s`, on `cpu` (None:
    wherever); the JSON its script prints (counts, latency percentiles in us) plus req/s."""
    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s",
        "-s", str(WRK_SCRIPT), base + PIXEL_PATH,
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        preexec_fn=None if cpu is None else pin_to(cpu),
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict = json.loads(line[len(MARKER) :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def hot_path_buckets(base: str, endpoint: str = "pixel") -> dict[float, float]:
    """Cumulative counts of beacon_hot_path_seconds{endpoint} by upper bound (le)."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "beacon_hot_path_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("endpoint") == endpoint:
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


def share_within(
    before: dict[float, float], after: dict[float, float], bound_s: float
) -> float | None:
    """The share of what was observed between two scrapes that took at most `bound_s`, read
    at a bucket bound (no interpolation: `bound_s` must be one)."""
    total = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    if bound_s not in after or total <= 0:
        return None
    return (after[bound_s] - before.get(bound_s, 0.0)) / total


def quantile_us(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile of what was observed between two scrapes, interpolated within its
    bucket as Prometheus' histogram_quantile() does; in microseconds."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower * 1e6  # past the last finite bucket: its bound is all we know
            inside = cumulative - below
            fraction = (rank - below) / inside if inside else 1.0
            return (lower + (bound - lower) * fraction) * 1e6
        lower, below = bound, cumulative
    return None
