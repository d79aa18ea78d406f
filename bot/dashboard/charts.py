"""Server-side SVG bar charts for the metrics page: no JavaScript, no inline styles (the CSP allows
neither); colours come from the dashboard's stylesheet through class names."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

_ROW = 26  # px per bar
_LABEL = 170  # px for the labels column
_WIDTH = 620
_VALUE = 60  # px for the value at the end of a bar


@dataclass(frozen=True)
class Row:
    """One bar: a label and its segments ``(series, value)``, stacked left to right."""

    label: str
    segments: tuple[tuple[str, float], ...]

    @property
    def total(self) -> float:
        return sum(v for _, v in self.segments)


def bar_chart(title: str, rows: Sequence[Row], *, unit: str = "") -> Markup:
    """A horizontal (stacked) bar chart as inline SVG; series name ``s`` is drawn with class ``s-<s>``."""
    height = max(1, len(rows)) * _ROW + 10
    scale = max((r.total for r in rows), default=0.0) or 1.0
    span = _WIDTH - _LABEL - _VALUE
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" height="{height}"'
        f' xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    if not rows:
        parts.append('<text x="0" y="18" class="chart-empty">no data yet</text>')
    for i, row in enumerate(rows):
        y = 5 + i * _ROW
        parts.append(f'<text x="{_LABEL - 8}" y="{y + 16}" text-anchor="end" class="chart-label">'
                     f"{escape(row.label)}</text>")  # fmt: skip
        x = float(_LABEL)
        for series, value in row.segments:
            w = span * value / scale
            if w > 0:
                box = f'x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{_ROW - 8}"'
                parts.append(f'<rect {box} class="s-{escape(series)}">'
                             f"<title>{escape(series)}: {_number(value)}{escape(unit)}</title></rect>")  # fmt: skip
            x += w
        parts.append(
            f'<text x="{x + 6:.1f}" y="{y + 16}" class="chart-value">{_number(row.total)}{escape(unit)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # every interpolated text is escaped above


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


# Edges of the duration histogram, in seconds (the last bucket is open-ended).
DURATION_EDGES = (0.0, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)


def _duration_label(low: float, high: float | None) -> str:
    def text(s: float) -> str:
        return f"{int(s)} s" if s < 60 else f"{int(s // 60)} min"

    return f"over {text(low)}" if high is None else f"{text(low)} to {text(high)}"


def histogram(durations: Sequence[float], series: str) -> list[Row]:
    """Durations counted into :data:`DURATION_EDGES` buckets, one row per bucket."""
    counts = [0] * len(DURATION_EDGES)
    for d in durations:
        i = max(i for i, edge in enumerate(DURATION_EDGES) if d >= edge) if d >= 0 else 0
        counts[i] += 1
    highs: list[float | None] = [*DURATION_EDGES[1:], None]
    return [Row(_duration_label(low, high), ((series, n),)) for low, high, n in zip(DURATION_EDGES, highs, counts,
                                                                                    strict=True)]  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
