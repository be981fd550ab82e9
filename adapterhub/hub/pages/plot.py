"""Metrics over versions: one SVG plot per metric across a repository's live versions.

The x axis is the version number, the y axis the metric's value; every point links to its
version's page (its tooltip names the version and the value), tagged versions are marked
with a dashed line and their tags, and the version a page is about is drawn larger.
Nested metrics are plotted by dotted name (``eval.accuracy``); only finite numbers count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

from adapterhub.hub.pages.layout import attr, flatten, value_text, version_href

if TYPE_CHECKING:
    from adapterhub.registry import Registry
    from registry_db import VersionInfo

#: versions plotted at most (the newest)
MAX_VERSIONS = 200
#: metrics plotted at most (alphabetically)
MAX_METRICS = 24
W, H, LEFT, RIGHT, TOP, BOTTOM = 440, 210, 58, 18, 30, 30


@dataclass(frozen=True)
class Point:
    version: VersionInfo
    value: float


def with_manifests(reg: Registry, versions: list[VersionInfo],
                   limit: int = MAX_VERSIONS) -> list[VersionInfo]:
    """The newest ``limit`` live versions of a listing, each with its manifest, oldest
    first (listings come without manifests)."""
    live = [v for v in versions if not v.deleted][:limit]
    return [v if v.manifest is not None else reg.resolve(v.ref) for v in reversed(live)]


def metric_series(versions: list[VersionInfo]) -> dict[str, list[Point]]:
    """``{metric: points}`` over ``versions`` (with manifests, oldest first)."""
    series: dict[str, list[Point]] = {}
    for v in versions:
        metrics = v.manifest.metrics if v.manifest is not None else {}
        for key, value in sorted(flatten(metrics).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                series.setdefault(key, []).append(Point(v, float(value)))
    return {k: series[k] for k in sorted(series)[:MAX_METRICS]}


def metric_svg(name: str, points: list[Point], current: int | None = None) -> str:
    """One metric's plot (``current``: the version number to draw larger)."""
    numbers = [p.version.number for p in points]
    values = [p.value for p in points]
    lo, hi = min(values), max(values)
    if not math.isfinite(hi - lo) or not math.isfinite(abs(lo) * 2 + abs(hi) * 2):
        return "<p class=muted>The values are too large to plot.</p>"
    pad = (hi - lo) * 0.12 if hi > lo else (abs(lo) * 0.1 or 1.0)
    lo, hi = lo - pad, hi + pad
    first, last = min(numbers), max(numbers)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(number: int) -> float:
        return LEFT + (plot_w / 2 if last == first else (number - first) / (last - first) * plot_w)

    def y(value: float) -> float:
        return TOP + (hi - value) / (hi - lo) * plot_h

    out = [f"<svg class=metric data-metric=\"{attr(name)}\" xmlns='http://www.w3.org/2000/svg' "
           f"width='{W}' height='{H}' viewBox='0 0 {W} {H}' role=img "
           f"aria-label=\"{attr(name)} over versions\">"
           f"<rect x='{LEFT}' y='{TOP}' width='{plot_w}' height='{plot_h}' fill='#fafafb' "
           f"stroke='#e2e2e6'/>"]
    for frac in (0.0, 0.5, 1.0):  # y ticks: bottom, middle, top of the data's range
        value = lo + pad + frac * (hi - lo - 2 * pad)
        ty = y(value)
        out.append(f"<line x1='{LEFT}' x2='{W - RIGHT}' y1='{ty:.1f}' y2='{ty:.1f}' "
                   f"stroke='#ececf0'/><text x='{LEFT - 6}' y='{ty + 4:.1f}' font-size=11 "
                   f"text-anchor=end fill='#6b6b70'>{escape(value_text(round(value, 12)))}</text>")
        if hi - lo - 2 * pad == 0:
            break
    step = max(1, math.ceil(len(numbers) / 12))
    for i, n in enumerate(numbers):
        if i % step == 0 or n == last:
            out.append(f"<text x='{x(n):.1f}' y='{H - 10}' font-size=11 text-anchor=middle "
                       f"fill='#6b6b70'>v{n}</text>")
    for p in points:  # tags: a dashed line and the tag names at the top
        if p.version.tags:
            px = x(p.version.number)
            tags = ", ".join(p.version.tags)
            out.append(f"<g class=tagmark data-version='{p.version.number}' "
                       f"data-tags=\"{attr(tags)}\"><line x1='{px:.1f}' x2='{px:.1f}' "
                       f"y1='{TOP}' y2='{TOP + plot_h}' stroke='#0b5cad' stroke-dasharray='3 3' "
                       f"stroke-opacity='.6'/><text x='{px:.1f}' y='{TOP - 8}' font-size=11 "
                       f"text-anchor=middle fill='#0b5cad'>{escape(tags[:40])}</text></g>")
    if len(points) > 1:
        path = " ".join(f"{x(p.version.number):.1f},{y(p.value):.1f}" for p in points)
        out.append(f"<polyline points='{path}' fill=none stroke='#d9822b' stroke-width='2'/>")
    for p in points:
        big = p.version.number == current
        tip = f"{p.version.ref} {name} = {value_text(p.value)}"
        out.append(f"<a href=\"{attr(version_href(p.version))}\"><circle "
                   f"class=\"point{' current' if big else ''}\" data-version='{p.version.number}'"
                   f" data-value='{p.value!r}' cx='{x(p.version.number):.1f}' "
                   f"cy='{y(p.value):.1f}' r='{6 if big else 4}' "
                   f"fill='{'#0b5cad' if big else '#d9822b'}' stroke=white stroke-width=1.5>"
                   f"<title>{escape(tip)}</title></circle></a>")
    out.append("</svg>")
    return "".join(out)


def metrics_html(versions: list[VersionInfo], current: int | None = None) -> str:
    """A figure per metric over ``versions`` (with manifests, oldest first)."""
    series = metric_series(versions)
    if not series:
        return "<p class=muted>No numeric metrics recorded.</p>"
    figures = "".join(f"<figure><figcaption>{escape(name)}</figcaption>"
                      f"{metric_svg(name, points, current)}</figure>"
                      for name, points in series.items())
    return f"<div class=plots>{figures}</div>"
