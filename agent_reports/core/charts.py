"""Small inline SVG charts for the HTML reports, built by hand: a few hundred bytes each,
no external request, no font or script, the same bytes on every run.

Each chart is a `Chart`: the SVG for the HTML view and a `Table` that says the same in
text (the Markdown view and mail clients that drop SVG show it). Every label is escaped
here: tickers, file names and analysis names come from data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from agent_reports.core.reports import Chart, Table, format_value

fmt = format_value
INK, MUTED, BAND, ACCENT = "#1b1f24", "#57606a", "#dbe9f6", "#0969da"
GOOD, BAD, LATE, GREY = "#1a7f37", "#cf222e", "#bf8700", "#d0d7de"
FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def _svg(width: int, height: int, body: Sequence[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" {FONT}>'
        + "".join(body)
        + "</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", fill: str = MUTED) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}">{escape(text)}</text>'
    )


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    return start if high == low else start + (value - low) / (high - low) * (end - start)


def price_chart(title: str, points: Sequence[tuple[str, float]], change: float | None) -> Chart:
    """A ticker's recent closes as a line, the last point marked; green when the day rose."""
    width, height, pad = 280, 70, 4
    values = [v for _, v in points]
    low, high = min(values), max(values)
    xs = [_scale(i, 0, max(len(values) - 1, 1), pad, width - 70) for i in range(len(values))]
    ys = [_scale(v, low, high, height - 14, pad + 2) for v in values]
    colour = GOOD if (change or 0) >= 0 else BAD
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    body = [
        f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>',
        f'<circle cx="{xs[-1]:.1f}" cy="{ys[-1]:.1f}" r="2.5" fill="{colour}"/>',
        _text(width - 64, ys[-1] + 4, fmt("price", values[-1]), fill=INK),
        _text(pad, height - 2, f"{points[0][0]} → {points[-1][0]}"),
        _text(width - 2, height - 2, fmt("pct", change), "end", colour),
    ]
    rows = [[day, value] for day, value in points[-5:]]
    return Chart(
        title,
        _svg(width, height, body, title),
        Table(title, ["day", "close"], rows, ["text", "price"]),
    )


@dataclass(frozen=True)
class Band:
    """A baseline: its values, its expected range, and the hour's observed value."""

    label: str
    kind: str  # a Table format: "int", "rate", ...
    values: Sequence[float]
    low: float
    high: float
    observed: float | None


def band_chart(title: str, bands: Sequence[Band]) -> Chart:
    """One strip per metric: the expected range shaded, the baseline hours as grey dots,
    the observed value as a dot, red when outside the range."""
    width, row, left = 520, 34, 80
    body = []
    for i, band in enumerate(bands):
        top = 6 + i * row
        points = [*band.values, band.low, band.high]
        if band.observed is not None:
            points.append(band.observed)
        low, high = min(points), max(points)
        span = (high - low) or 1.0
        low, high = low - 0.05 * span, high + 0.05 * span
        x0, x1 = (_scale(v, low, high, left, width - 70) for v in (band.low, band.high))
        body += [
            _text(0, top + 13, band.label, fill=INK),
            f'<rect x="{x0:.1f}" y="{top + 2}" width="{max(x1 - x0, 1):.1f}" height="14" '
            f'fill="{BAND}"/>',
            _text(x0, top + 28, fmt(band.kind, band.low), "middle"),
            _text(x1, top + 28, fmt(band.kind, band.high), "middle"),
        ]
        body += [
            f'<circle cx="{_scale(v, low, high, left, width - 70):.1f}" cy="{top + 9}" r="2" '
            f'fill="{MUTED}"/>'
            for v in band.values
        ]
        if band.observed is not None:
            outside = not band.low <= band.observed <= band.high
            colour = BAD if outside else ACCENT
            x = _scale(band.observed, low, high, left, width - 70)
            body += [
                f'<circle cx="{x:.1f}" cy="{top + 9}" r="4.5" fill="{colour}"/>',
                _text(width - 64, top + 13, fmt(band.kind, band.observed), fill=colour),
            ]
    rows = [
        [
            b.label,
            fmt(b.kind, b.observed),
            f"{fmt(b.kind, b.low)} – {fmt(b.kind, b.high)}",
            len(b.values),
        ]
        for b in bands
    ]
    table = Table(title, ["metric", "this hour", "expected", "baseline hours"], rows)
    return Chart(title, _svg(width, 8 + row * len(bands), body, title), table)


def stacked_bars(
    title: str,
    rows: Sequence[tuple[str, dict[str, int]]],
    parts: Sequence[tuple[str, str]],
) -> Chart:
    """One horizontal bar per row, split into `parts` (name, colour), widths by share."""
    width, row, left = 460, 22, 90
    body = []
    for i, (label, counts) in enumerate(rows):
        top = 4 + i * row
        total = sum(counts.get(name, 0) for name, _ in parts)
        body.append(_text(0, top + 12, label, fill=INK))
        x = float(left)
        for name, colour in parts:
            share = counts.get(name, 0) / total if total else 0.0
            w = share * (width - left - 60)
            if w > 0:
                body.append(
                    f'<rect x="{x:.1f}" y="{top + 2}" width="{w:.1f}" height="13" fill="{colour}">'
                    f"<title>{escape(f'{name}: {counts.get(name, 0)}')}</title></rect>"
                )
            x += w
        done = counts.get(parts[0][0], 0)
        body.append(_text(width - 55, top + 12, f"{done}/{total}" if total else "none"))
    legend_y = 4 + row * len(rows) + 10
    x = float(left)
    for name, colour in parts:
        body += [
            f'<rect x="{x:.1f}" y="{legend_y - 8}" width="9" height="9" fill="{colour}"/>',
            _text(x + 12, legend_y, name),
        ]
        x += 14 + 7 * len(name) + 8
    table = Table(
        title,
        ["analysis", *(name for name, _ in parts)],
        [[label, *(counts.get(name, 0) for name, _ in parts)] for label, counts in rows],
    )
    return Chart(title, _svg(width, legend_y + 6, body, title), table)


def bar_series(
    title: str, points: Sequence[tuple[str, float]], highlight: set[str], unit: str
) -> Chart:
    """Vertical bars over time (e.g. customers who left per week), highlighted ones red."""
    width, height, pad = 420, 110, 4
    values = [v for _, v in points]
    top = max(values, default=0) or 1
    step = (width - 2 * pad) / max(len(points), 1)
    body = []
    for i, (label, value) in enumerate(points):
        h = value / top * (height - 30)
        colour = BAD if label in highlight else ACCENT
        x = pad + i * step
        body.append(
            f'<rect x="{x + 1:.1f}" y="{height - 16 - h:.1f}" width="{step - 2:.1f}" '
            f'height="{h:.1f}" fill="{colour}"><title>{escape(f"{label}: {value:g} {unit}")}'
            "</title></rect>"
        )
        if label in highlight:
            body.append(_text(x + step / 2, height - 19 - h, f"{value:g}", "middle", BAD))
    if points:
        body += [
            _text(pad, height - 3, points[0][0]),
            _text(width - pad, height - 3, points[-1][0], "end"),
        ]
    table = Table(title, ["week", unit], [[label, value] for label, value in points])
    return Chart(title, _svg(width, height, body, title), table)
