"""Server-rendered SVG charts for the usage page: bars per day and a line over days.

The SVG is built from numbers and escaped labels only, so it is safe to put into a page as
markup. Each chart carries a <title> and a <desc> (read by screen readers) and a data table
is rendered next to it by the template."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

WIDTH, HEIGHT = 640, 200
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 72, 28, 12


def _scale(values: Sequence[float]) -> float:
    """The top of the value axis (1 when every value is 0 or below)."""
    top = max((v for v in values), default=0.0)
    return top if top > 0 else 1.0


def _frame(title: str, desc: str, body: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
            f'<title>{escape(title)}</title><desc>{escape(desc)}</desc>{body}</svg>')


def _axes(top: float, fmt: Callable[[float], str], empty: bool = False) -> str:
    base = HEIGHT - PAD_BOTTOM
    if empty:  # every value is 0: no top tick to invent
        return (f'<line class="axis" x1="{PAD_LEFT}" y1="{base}" x2="{WIDTH}" y2="{base}"/>'
                f'<text class="tick" x="{PAD_LEFT - 4}" y="{base}" text-anchor="end">0</text>')
    return (f'<line class="axis" x1="{PAD_LEFT}" y1="{base}" x2="{WIDTH}" y2="{base}"/>'
            f'<text class="tick" x="{PAD_LEFT - 4}" y="{PAD_TOP + 4}" text-anchor="end">'
            f'{escape(fmt(top))}</text>'
            f'<text class="tick" x="{PAD_LEFT - 4}" y="{base}" text-anchor="end">0</text>')


def bars(title: str, labels: Sequence[str], values: Sequence[float],
         fmt: Callable[[float], str] = lambda v: f"{v:g}") -> str:
    """A bar per label; the empty chart says so."""
    if not labels:
        return _frame(title, "no data in this period",
                      f'<text class="tick" x="{WIDTH / 2}" y="{HEIGHT / 2}" '
                      f'text-anchor="middle">no data</text>')
    top = _scale(values)
    span = (WIDTH - PAD_LEFT) / len(labels)
    inner = HEIGHT - PAD_BOTTOM - PAD_TOP
    parts = [_axes(top, fmt, empty=max(values) <= 0)]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = inner * value / top
        x = PAD_LEFT + i * span + span * 0.15
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{HEIGHT - PAD_BOTTOM - h:.1f}" '
                     f'width="{span * 0.7:.1f}" height="{h:.1f}">'
                     f'<title>{escape(label)}: {escape(fmt(value))}</title></rect>')
        if len(labels) <= 14 or i % max(1, len(labels) // 7) == 0:
            parts.append(f'<text class="tick" x="{x + span * 0.35:.1f}" y="{HEIGHT - 8}" '
                         f'text-anchor="middle">{escape(label[5:] or label)}</text>')
    desc = ", ".join(f"{label}: {fmt(v)}" for label, v in zip(labels, values, strict=True))
    return _frame(title, desc, "".join(parts))


def line(title: str, labels: Sequence[str], values: Sequence[float],
         fmt: Callable[[float], str] = lambda v: f"{v:g}") -> str:
    """A line through the values (a single value: a dot)."""
    if not labels:
        return bars(title, labels, values, fmt)
    top = _scale(values)
    inner = HEIGHT - PAD_BOTTOM - PAD_TOP
    step = (WIDTH - PAD_LEFT - 12) / max(1, len(labels) - 1)
    points = [(PAD_LEFT + 6 + i * step, HEIGHT - PAD_BOTTOM - inner * max(v, 0) / top)
              for i, v in enumerate(values)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dots = "".join(f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                   f'<title>{escape(label)}: {escape(fmt(v))}</title></circle>'
                   for (x, y), label, v in zip(points, labels, values, strict=True))
    ticks = (f'<text class="tick" x="{points[0][0]:.1f}" y="{HEIGHT - 8}">'
             f'{escape(labels[0])}</text>'
             f'<text class="tick" x="{points[-1][0]:.1f}" y="{HEIGHT - 8}" text-anchor="end">'
             f'{escape(labels[-1])}</text>')
    desc = ", ".join(f"{label}: {fmt(v)}" for label, v in zip(labels, values, strict=True))
    axes = _axes(top, fmt, empty=max(values) <= 0)
    return _frame(title, desc, f'{axes}<polyline class="line" points="{path}"/>{dots}{ticks}')
