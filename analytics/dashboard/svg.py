"""Charts as inline SVG, drawn on the server: no script, nothing to load, easy to test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from analytics.dashboard.timeaxis import Tick, ticks

WIDTH_PX = 720
HEIGHT_PX = 220
PAD_LEFT_PX, PAD_RIGHT_PX, PAD_TOP_PX, PAD_BOTTOM_PX = 48, 24, 28, 28
GRID_LINES = 4
MAX_DOTS = 48
AXIS = "#8a94a6"
GRID = "#e6e9ef"
BOUNDARY = "#b7bfcc"


def nice_max(value: float) -> int:
    """The axis top: a round number at least `value` whose quarters are whole and round."""
    magnitude = 1
    while True:
        for step in (1, 1.2, 1.6, 2, 3, 4, 6, 8):
            top = int(step * magnitude)
            if top >= value and top % GRID_LINES == 0:
                return top
        magnitude *= 10


@dataclass(frozen=True)
class Plot:
    """Where `count` periods go across a chart `width_px` wide."""

    count: int
    width_px: int = WIDTH_PX

    @property
    def inner_w(self) -> float:
        return self.width_px - PAD_LEFT_PX - PAD_RIGHT_PX

    def x(self, i: float) -> float:
        """The middle of period `i`."""
        return PAD_LEFT_PX + self.inner_w * (i + 0.5) / max(self.count, 1)

    def slot_px(self) -> float:
        return self.inner_w / max(self.count, 1)


def y_of(value: float, top: int) -> float:
    inner_h = HEIGHT_PX - PAD_TOP_PX - PAD_BOTTOM_PX
    return PAD_TOP_PX + inner_h - inner_h * value / top


def frame(
    plot: Plot, labels: Sequence[str], top: int, legend: Sequence[tuple[str, str]]
) -> list[str]:
    """Grid, y axis values, the time axis (its day boundaries marked) and the legend."""
    inner_h = HEIGHT_PX - PAD_TOP_PX - PAD_BOTTOM_PX
    out = []
    for i in range(GRID_LINES + 1):
        y = PAD_TOP_PX + inner_h - inner_h * i / GRID_LINES
        value = top * i // GRID_LINES
        out.append(f'<line x1="{PAD_LEFT_PX}" x2="{plot.width_px - PAD_RIGHT_PX}" y1="{y:.1f}" '
                   f'y2="{y:.1f}" stroke="{GRID}"/>')  # fmt: skip
        out.append(f'<text x="{PAD_LEFT_PX - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    out += [axis_text(plot, tick) for tick in ticks(labels, plot.slot_px())]
    x = PAD_LEFT_PX
    for name, color in legend:
        out.append(f'<rect x="{x}" y="6" width="10" height="10" rx="2" fill="{color}"/>')
        out.append(f'<text x="{x + 14}" y="15">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return out


def axis_text(plot: Plot, tick: Tick) -> str:
    """A tick's label under its period; a day boundary also gets a dashed line at its start."""
    x = plot.x(tick.index)
    weight = ' font-weight="600" fill="#475467"' if tick.boundary else ""
    text = (f'<text x="{x:.1f}" y="{HEIGHT_PX - 8}" text-anchor="middle" data-tick="{tick.index}"'
            f"{weight}>{escape(tick.text)}</text>")  # fmt: skip
    if not tick.line:
        return text
    edge = x - plot.slot_px() / 2
    return (f'<line class="day" x1="{edge:.1f}" x2="{edge:.1f}" y1="{PAD_TOP_PX}" '
            f'y2="{HEIGHT_PX - PAD_BOTTOM_PX + 4}" stroke="{BOUNDARY}" stroke-dasharray="3 3"/>'
            + text)  # fmt: skip


def svg(body: list[str], title: str, width_px: int = WIDTH_PX) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width_px} {HEIGHT_PX}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[int]]],
    width_px: int = WIDTH_PX,
    area: bool = False,
) -> str:
    """One line per (name, color, values), the first shaded below when `area`; a dot on each
    point when there are few."""
    plot = Plot(len(labels), width_px)
    top = nice_max(max((v for _, _, values in series for v in values), default=0))
    body = frame(plot, labels, top, [(name, color) for name, color, _ in series])
    for n, (name, color, values) in enumerate(series):
        xy = [(plot.x(i), y_of(v, top)) for i, v in enumerate(values)]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        if area and n == 0 and xy:
            base = y_of(0, top)
            body.append(f'<polygon fill="{color}" fill-opacity="0.12" points="{xy[0][0]:.1f},'
                        f'{base:.1f} {points} {xy[-1][0]:.1f},{base:.1f}"/>')  # fmt: skip
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                    f'stroke-linejoin="round" points="{points}"><title>{escape(name)}</title>'
                    "</polyline>")  # fmt: skip
        if len(values) <= MAX_DOTS:
            body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"><title>'
                     f"{escape(labels[i])}: {values[i]} {escape(name)}</title></circle>"
                     for i, (x, y) in enumerate(xy)]  # fmt: skip
    return svg(body, title, width_px)


def stacked_bars(
    title: str, labels: Sequence[str], stacks: Sequence[tuple[str, str, Sequence[int]]]
) -> str:
    """One bar per label, its stacks (name, color, values) bottom up."""
    plot = Plot(len(labels))
    totals = [sum(values[i] for _, _, values in stacks) for i in range(len(labels))]
    top = nice_max(max(totals, default=0))
    body = frame(plot, labels, top, [(name, color) for name, color, _ in stacks])
    bar_w = max(2.0, plot.slot_px() * 0.7)
    for i, label in enumerate(labels):
        base = 0
        for name, color, values in stacks:
            if values[i]:
                y0, y1 = y_of(base, top), y_of(base + values[i], top)
                body.append(
                    f'<rect x="{plot.x(i) - bar_w / 2:.1f}" y="{y1:.1f}" '
                    f'width="{bar_w:.1f}" height="{y0 - y1:.1f}" fill="{color}">'
                    f"<title>{escape(label)}: {values[i]} {escape(name)}</title></rect>"
                )
            base += values[i]
    return svg(body, title)
