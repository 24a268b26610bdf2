"""Medians and ratios over the rounds, and the three outputs: JSON, markdown table, PNG chart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from loadtest.bench.servers import SERVERS

BASELINES = ("nginx", "aiohttp", "fastapi")


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per server: medians over the rounds, and each ratio to a baseline as the median of the
    per-round ratios (both measured in the same round, minutes apart at most)."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["server"]] = run
    summary: dict[str, dict[str, Any]] = {}
    names = [n for n in SERVERS if any(r["server"] == n for r in runs)]
    for name in names:
        mine = [r for r in runs if r["server"] == name]
        row: dict[str, Any] = {
            "label": SERVERS[name].label,
            "rounds": len(mine),
            "rps": median([r["rps"] for r in mine]),
            "p50_ms": median([r["p50_us"] / 1000 for r in mine]),
            "p99_ms": median([r["p99_us"] / 1000 for r in mine]),
            "rss_mb": median([r["rss_mb"] for r in mine]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in mine]),
            "errors": sum(sum(r["errors"].values()) for r in mine),
        }
        if SERVERS[name].beacon:
            row["hot_path_p50_us"] = median([r.get("hot_path_p50_us") for r in mine])
            row["hot_path_p99_us"] = median([r.get("hot_path_p99_us") for r in mine])
            row["hot_path_within_50us"] = median([r.get("hot_path_within_50us") for r in mine])
        for base in BASELINES:
            ratios = [
                runs_of[name]["rps"] / runs_of[base]["rps"]
                for runs_of in by_round.values()
                if name in runs_of and base in runs_of
            ]
            row[f"x_{base}"] = median(ratios)
        summary[name] = row
    return summary


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    head = (
        "| server | req/s | x nginx | x bare aiohttp | x FastAPI | p50 ms | p99 ms "
        "| handler p99 µs | handler ≤ 50 µs | RSS MB |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {row['label']} | {_fmt(row['rps'], ',.0f')} | {_fmt(row['x_nginx'], '.2f')} "
        f"| {_fmt(row['x_aiohttp'], '.2f')} | {_fmt(row['x_fastapi'], '.2f')} "
        f"| {_fmt(row['p50_ms'], '.2f')} | {_fmt(row['p99_ms'], '.2f')} "
        f"| {_fmt(row.get('hot_path_p99_us'), '.0f')} "
        f"| {_percent(row.get('hot_path_within_50us'))} | {_fmt(row['rss_mb'], '.0f')} |"
        for row in summary.values()
    ]
    return head + "\n".join(lines) + "\n"


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def chart(summary: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Throughput relative to nginx, and p99 latency, one bar per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    labels = [summary[n]["label"] for n in names]
    ratios = [summary[n]["x_nginx"] or 0.0 for n in names]
    p99 = [summary[n]["p99_ms"] or 0.0 for n in names]
    colors = ["#1f77b4" if SERVERS[n].beacon else "#9a9a9a" for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.55 * len(names) + 1.6))
    y = list(range(len(names)))[::-1]
    left.barh(y, ratios, color=colors)
    left.set_yticks(y, labels)
    left.set_xlabel("req/s relative to nginx empty_gif (same core, same run)")
    for yi, name in zip(y, names, strict=True):
        row = summary[name]
        note = "-" if row["x_nginx"] is None else f"{row['x_nginx']:.2f}x"
        if name != "aiohttp" and row["x_aiohttp"] is not None:
            note += f"  ({row['x_aiohttp']:.2f}x aiohttp)"
        left.text((row["x_nginx"] or 0) + 0.01, yi, note, va="center", fontsize=8)
    left.set_xlim(0, max([*ratios, 1.0]) * 1.45)
    notes = [f"{value:.2f}" for value in p99]
    labelled_bars(right, y, p99, notes, "p99 latency, ms (wrk, keep-alive)", 1.25, colors)
    right.set_yticks(y, [""] * len(names))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bars(path: Path, title: str, xlabel: str, rows: list[tuple[str, float, str]]) -> None:
    """One horizontal bar per (label, value, note): the chart of the consumer and end-to-end
    benches (loadtest/bench_consumer.py, loadtest/bench_e2e.py). Without matplotlib (run as
    `python -m`, outside the make targets that install the `bench` extra) it says so: the
    figures are printed and written already."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        print(f"no chart {path.name}: matplotlib is not installed (`pip install -e '.[bench]'`,"
              " or the make target)")  # fmt: skip
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.4))
    y = list(range(len(rows)))[::-1]
    values = [value for _, value, _ in rows]
    labelled_bars(ax, y, values, [note for _, _, note in rows], xlabel, 1.35, "#1f77b4")
    ax.set_yticks(y, [label for label, _, _ in rows])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def labelled_bars(  # type: ignore[no-untyped-def]
    ax, y: list[int], values: list[float], notes: list[str], xlabel: str, room: float, color
) -> None:
    """Horizontal bars at `y`, each with its note after it; `room`: x range over the largest."""
    ax.barh(y, values, color=color)
    ax.set_xlabel(xlabel)
    for yi, value, note in zip(y, values, notes, strict=True):
        ax.text(value, yi, f" {note}", va="center", fontsize=8)
    ax.set_xlim(0, max([*values, 1.0]) * room)
