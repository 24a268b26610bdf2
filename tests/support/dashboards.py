"""The Grafana dashboards' Prometheus queries."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, rate_interval: str) -> str:
    """Grafana's variables in a query, as a server would see them with every option chosen."""
    for name in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(name, rate_interval)
    expr = re.sub(r'=~"\$\{?\w+\}?"', '=~".*"', expr)  # multi-value variables, "All"
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def dashboard_promql(rate_interval: str = "1m") -> list[tuple[str, str, str]]:
    """(dashboard file stem, panel title, PromQL) of every Prometheus query of the dashboards."""
    found = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == "prometheus":
                    found.append(
                        (path.stem, panel["title"], substitute(target["expr"], rate_interval))
                    )
    return found
