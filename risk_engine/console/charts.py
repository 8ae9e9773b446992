"""Charts for the console as inline SVG: no script, no asset, nothing from outside.

Every label that comes from data is escaped; the SVG is then marked safe for
the templates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

COLORS = {"allow": "#2e7d32", "step_up": "#ef6c00", "deny": "#c62828"}
DECISIONS = ("allow", "step_up", "deny")


def _svg(width: int, height: int, body: list[str], title: str) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        + "".join(body)
        + "</svg>"
    )


def stacked_bars(hours: Sequence[float], series: dict[str, list[int]], *, title: str) -> Markup:
    """Decisions per hour, stacked allow / step_up / deny."""
    width, height, pad = 640, 160, 24
    n = max(len(hours), 1)
    totals = [sum(series.get(d, [0] * n)[i] for d in DECISIONS) for i in range(n)]
    top = max([*totals, 1])
    bar = (width - 2 * pad) / n
    body = [
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#888"/>',
        f'<text x="{pad}" y="12" font-size="11">max {top:,}/h</text>',
    ]
    for i in range(n):
        y = float(height - pad)
        for decision in DECISIONS:
            count = series.get(decision, [0] * n)[i]
            if not count:
                continue
            h = (height - 2 * pad) * count / top
            y -= h
            body.append(
                f'<rect x="{pad + i * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{COLORS[decision]}"><title>{decision}: {count}</title>'
                "</rect>"
            )
    if hours:
        for i in (0, n - 1):
            label = datetime.fromtimestamp(hours[i], UTC).strftime("%m-%d %H:00")
            anchor = "start" if i == 0 else "end"
            x = pad if i == 0 else width - pad
            body.append(
                f'<text x="{x}" y="{height - 6}" font-size="11" text-anchor="{anchor}">'
                f"{label}</text>"
            )
    return _svg(width, height, body, title)


def histogram(bins: Sequence[int], *, title: str) -> Markup:
    """The score histogram, bins of 0.1 from 0 to 1."""
    width, height, pad = 640, 160, 24
    top = max([*bins, 1])
    bar = (width - 2 * pad) / max(len(bins), 1)
    body = []
    for i, count in enumerate(bins):
        h = (height - 2 * pad) * count / top
        body.append(
            f'<rect x="{pad + i * bar:.1f}" y="{height - pad - h:.1f}" width="{bar - 2:.1f}" '
            f'height="{h:.1f}" fill="#1565c0"><title>{i / 10:.1f}-{(i + 1) / 10:.1f}: '
            f"{count}</title></rect>"
            f'<text x="{pad + i * bar + bar / 2:.1f}" y="{height - 6}" font-size="10" '
            f'text-anchor="middle">{i / 10:.1f}</text>'
        )
    return _svg(width, height, body, title)


def place_map(points: Sequence[tuple[float, float, str, str, str]], *, title: str) -> Markup:
    """Places over time: (latitude, longitude, place name, tooltip, decision), oldest first.

    Consecutive places are joined in order, and each distinct place is named once.

    Equirectangular, framed on the points (a city-sized spread is not a dot on a
    world map), with a faint graticule every 10 degrees.
    """
    width, height, pad = 640, 320, 20
    if not points:
        return _svg(width, 40, ['<text x="10" y="24">no located events</text>'], title)
    lats = [p[0] for p in points]
    lons = [p[1] for p in points]
    span = max(max(lats) - min(lats), max(lons) - min(lons), 2.0) * 1.2
    mid_lat, mid_lon = (max(lats) + min(lats)) / 2, (max(lons) + min(lons)) / 2
    scale = min((width - 2 * pad) / span, (height - 2 * pad) / span)

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return width / 2 + (lon - mid_lon) * scale, height / 2 - (lat - mid_lat) * scale

    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f4f7fb"/>']
    for g in range(-180, 181, 10):
        x, _ = xy(0, g)
        if 0 <= x <= width:
            body.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="#dde"/>')
    for g in range(-90, 91, 10):
        _, y = xy(g, 0)
        if 0 <= y <= height:
            body.append(f'<line x1="0" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" stroke="#dde"/>')
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(p[0], p[1]) for p in points))
    body.append(f'<polyline points="{path}" fill="none" stroke="#999" stroke-dasharray="4 3"/>')
    named: set[str] = set()
    for lat, lon, name, label, decision in points:
        x, y = xy(lat, lon)
        body.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{COLORS.get(decision, "#555")}">'
            f"<title>{escape(label)}</title></circle>"
        )
        if name not in named:
            named.add(name)
            body.append(
                f'<text x="{x + 8:.1f}" y="{y - 8:.1f}" font-size="13">{escape(name)}</text>'
            )
    return _svg(width, height, body, title)
