"""Line charts of a run's metrics as plain SVG geometry, drawn server-side.

No JavaScript library (nothing to download, nothing to build): the run page polls a partial
that carries fresh polylines.
"""

from __future__ import annotations

import math

WIDTH, HEIGHT, PAD = 440, 170, 34
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(
    title: str, series: dict[str, list[tuple[int, float]]], marks: dict[str, int] | None = None
) -> dict | None:
    """Template data for one chart, or None when there is nothing to draw. `marks`: labelled
    steps drawn as vertical lines inside the chart's range (e.g. where a resume continued)."""
    series = {k: [(s, v) for s, v in pts if math.isfinite(v)] for k, pts in series.items()}
    series = {k: pts for k, pts in series.items() if pts}
    if not series:
        return None
    steps = [s for pts in series.values() for s, _ in pts]
    values = [v for pts in series.values() for _, v in pts]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def xy(step: int, value: float) -> str:
        x = PAD + (step - x0) / (x1 - x0) * w
        y = PAD + (1 - (value - y0) / (y1 - y0)) * h
        return f"{x:.1f},{y:.1f}"

    lines = []
    for i, (name, pts) in enumerate(sorted(series.items())):
        lines.append(
            {
                "name": name,
                "color": COLORS[i % len(COLORS)],
                "points": " ".join(xy(s, v) for s, v in pts),
                "count": len(pts),
                "last": _fmt(pts[-1][1]),
                "single": len(pts) == 1,
                "first_xy": xy(*pts[0]).split(","),
            }
        )
    verticals = [
        {"label": label, "step": step, "x": f"{PAD + (step - x0) / (x1 - x0) * w:.1f}"}
        for label, step in (marks or {}).items()
        if x0 <= step <= x1
    ]
    return {
        "title": title,
        "marks": verticals,
        "width": WIDTH,
        "height": HEIGHT,
        "pad": PAD,
        "right": WIDTH - PAD,
        "bottom": HEIGHT - PAD,
        "lines": lines,
        "x_min": x0,
        "x_max": x1,
        "y_min": _fmt(y0),
        "y_max": _fmt(y1),
    }
