"""Charts as inline SVG, drawn on the server: no script, nothing to load, easy to test."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH_PX = 720
HEIGHT_PX = 220
PAD_LEFT_PX, PAD_RIGHT_PX, PAD_TOP_PX, PAD_BOTTOM_PX = 48, 12, 28, 28
GRID_LINES = 4
MAX_X_LABELS = 8
AXIS = "#8a94a6"
GRID = "#e6e9ef"


def nice_max(value: float) -> int:
    """The axis top: a round number at least `value` whose quarters are whole and round."""
    magnitude = 1
    while True:
        for step in (1, 1.2, 1.6, 2, 3, 4, 6, 8):
            top = int(step * magnitude)
            if top >= value and top % GRID_LINES == 0:
                return top
        magnitude *= 10


def frame(labels: Sequence[str], top: int, legend: Sequence[tuple[str, str]]) -> list[str]:
    """Grid, y axis values, x labels (a few) and the legend."""
    inner_h = HEIGHT_PX - PAD_TOP_PX - PAD_BOTTOM_PX
    out = []
    for i in range(GRID_LINES + 1):
        y = PAD_TOP_PX + inner_h - inner_h * i / GRID_LINES
        value = top * i // GRID_LINES
        out.append(f'<line x1="{PAD_LEFT_PX}" x2="{WIDTH_PX - PAD_RIGHT_PX}" y1="{y:.1f}" '
                   f'y2="{y:.1f}" stroke="{GRID}"/>')  # fmt: skip
        out.append(f'<text x="{PAD_LEFT_PX - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    every = max(1, -(-len(labels) // MAX_X_LABELS))
    for i, label in enumerate(labels):
        if i % every == 0:
            x = x_of(i, len(labels))
            out.append(f'<text x="{x:.1f}" y="{HEIGHT_PX - 8}" text-anchor="middle">'
                       f"{escape(label)}</text>")  # fmt: skip
    x = PAD_LEFT_PX
    for name, color in legend:
        out.append(f'<rect x="{x}" y="6" width="10" height="10" rx="2" fill="{color}"/>')
        out.append(f'<text x="{x + 14}" y="15">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return out


def x_of(i: int, count: int) -> float:
    inner_w = WIDTH_PX - PAD_LEFT_PX - PAD_RIGHT_PX
    return PAD_LEFT_PX + inner_w * (i + 0.5) / max(count, 1)


def y_of(value: float, top: int) -> float:
    inner_h = HEIGHT_PX - PAD_TOP_PX - PAD_BOTTOM_PX
    return PAD_TOP_PX + inner_h - inner_h * value / top


def svg(body: list[str], title: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def line_chart(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[int]]]
) -> str:
    """One line per (name, color, values); a dot on each point when there are few."""
    top = nice_max(max((v for _, _, values in series for v in values), default=0))
    body = frame(labels, top, [(name, color) for name, color, _ in series])
    for name, color, values in series:
        points = " ".join(f"{x_of(i, len(values)):.1f},{y_of(v, top):.1f}" for i, v in
                          enumerate(values))  # fmt: skip
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                    f'stroke-linejoin="round" points="{points}"><title>{escape(name)}</title>'
                    "</polyline>")  # fmt: skip
        if len(values) <= 48:
            body += [f'<circle cx="{x_of(i, len(values)):.1f}" cy="{y_of(v, top):.1f}" r="2.5" '
                     f'fill="{color}"><title>{escape(labels[i])}: {v} {escape(name)}</title>'
                     "</circle>" for i, v in enumerate(values)]  # fmt: skip
    return svg(body, title)


def stacked_bars(
    title: str, labels: Sequence[str], stacks: Sequence[tuple[str, str, Sequence[int]]]
) -> str:
    """One bar per label, its stacks (name, color, values) bottom up."""
    totals = [sum(values[i] for _, _, values in stacks) for i in range(len(labels))]
    top = nice_max(max(totals, default=0))
    body = frame(labels, top, [(name, color) for name, color, _ in stacks])
    inner_w = WIDTH_PX - PAD_LEFT_PX - PAD_RIGHT_PX
    bar_w = max(2.0, inner_w / max(len(labels), 1) * 0.7)
    for i, label in enumerate(labels):
        base = 0
        for name, color, values in stacks:
            if values[i]:
                y0, y1 = y_of(base, top), y_of(base + values[i], top)
                body.append(
                    f'<rect x="{x_of(i, len(labels)) - bar_w / 2:.1f}" y="{y1:.1f}" '
                    f'width="{bar_w:.1f}" height="{y0 - y1:.1f}" fill="{color}">'
                    f"<title>{escape(label)}: {values[i]} {escape(name)}</title></rect>"
                )
            base += values[i]
    return svg(body, title)
