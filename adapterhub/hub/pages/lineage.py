"""A version's lineage as an SVG drawing: the versions it descends from (merge inputs,
fine-tuned-from) above it, the versions made from it below, each a link to its page.

Every lookup goes through the caller's view of the registry: a parent the caller may not
read is drawn as an opaque digest, with no name and no link; children the caller may not
read are not drawn at all (the store does not return them). Edges of a merge carry the
strategy and the weight of that input; a merged version notes that its recipe can be
replayed (``adapterhub rebuild``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any

from adapterhub.hub.pages.layout import attr, value_text, version_href

if TYPE_CHECKING:
    from adapterhub.registry import Registry
    from registry_db import Manifest, VersionInfo

#: ancestors and descendants drawn at most (each)
MAX_NODES = 40
NODE_W, NODE_H, GAP_X, ROW_H, PAD = 220, 48, 28, 104, 16


@dataclass
class Node:
    """One version in the drawing. ``version`` is None when the caller may not read it."""

    digest: str
    version: VersionInfo | None
    depth: int  # < 0: an ancestor, 0: the version itself, > 0: a descendant


@dataclass(frozen=True)
class Edge:
    parent: str
    child: str
    label: str


@dataclass
class Lineage:
    root: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    truncated: bool = False


def edge_label(manifest: Manifest, index: int) -> str:
    """How input ``index`` went into a version: ``ties ×0.7`` for a merge, else empty."""
    recipe: dict[str, Any] | None = manifest.recipe
    if not recipe:
        return ""
    strategy = str(recipe.get("strategy", "merge"))
    weights = recipe.get("weights")
    if isinstance(weights, list) and index < len(weights):
        return f"{strategy} ×{value_text(weights[index])}"
    return strategy


def build_lineage(reg: Registry, version: VersionInfo, limit: int = MAX_NODES) -> Lineage:
    """Ancestors (breadth first, nearest first) and descendants of ``version`` (which has
    its manifest), as the caller of ``reg`` may see them."""
    graph = Lineage(version.digest, {version.digest: Node(version.digest, version, 0)})
    edges: dict[tuple[str, str], Edge] = {}
    up: deque[tuple[VersionInfo, int]] = deque([(version, -1)])
    count = 0
    while up:
        child, depth = up.popleft()
        for index, parent in enumerate(child.manifest.parents if child.manifest else ()):
            if parent not in graph.nodes:
                if count >= limit:
                    graph.truncated = True
                    continue
                count += 1
                found = reg.find(parent)
                graph.nodes[parent] = Node(parent, found, depth)
                if found is not None:
                    up.append((found, depth - 1))
            edges.setdefault((parent, child.digest),
                             Edge(parent, child.digest, edge_label(child.manifest, index)))
    down: deque[tuple[str, int]] = deque([(version.digest, 1)])
    count = 0
    while down:
        digest, depth = down.popleft()
        for listed in reg.service.children(digest, caller=reg.caller):
            known = graph.nodes.get(listed.digest)
            if known is None:
                if count >= limit:
                    graph.truncated = True
                    continue
                count += 1
                child = reg.resolve(listed.ref)  # with its manifest, for the recipe
                graph.nodes[child.digest] = Node(child.digest, child, depth)
                down.append((child.digest, depth + 1))
            elif known.depth <= 0:
                continue  # (a digest stored twice) drawn once
            manifest = graph.nodes[listed.digest].version.manifest
            index = list(manifest.parents).index(digest) if manifest else 0
            edges.setdefault((digest, listed.digest),
                             Edge(digest, listed.digest, edge_label(manifest, index)))
    graph.edges = list(edges.values())
    return graph


def _clip(text: str, n: int = 30) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _subtitle(node: Node) -> str:
    v = node.version
    if v is None:
        return "not readable"
    parts = [v.method]
    recipe = v.manifest.recipe if v.manifest is not None else None
    if recipe:
        parts.append(f"{recipe.get('strategy', 'merge')} merge · rebuildable")
    elif v.parents:
        parts.append("derived")
    if v.deleted:
        parts.append("deleted")
    if v.tags:
        parts.append(", ".join(v.tags))
    return " · ".join(str(p) for p in parts)


def lineage_svg(graph: Lineage) -> str:
    """The drawing: one row per generation, ancestors on top; nodes link to their pages."""
    rows: dict[int, list[Node]] = {}
    for node in graph.nodes.values():
        rows.setdefault(node.depth, []).append(node)
    depths = sorted(rows)
    widest = max(len(r) for r in rows.values())
    width = 2 * PAD + widest * (NODE_W + GAP_X) - GAP_X
    height = 2 * PAD + len(depths) * ROW_H - (ROW_H - NODE_H)
    where: dict[str, tuple[float, float]] = {}
    for r, depth in enumerate(depths):
        row = rows[depth]
        left = (width - (len(row) * (NODE_W + GAP_X) - GAP_X)) / 2
        for i, node in enumerate(row):
            where[node.digest] = (left + i * (NODE_W + GAP_X), PAD + r * ROW_H)
    out = [f"<svg class=lineage xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' "
           f"height='{height:.0f}' viewBox='0 0 {width:.0f} {height:.0f}' role=img "
           f"aria-label='Lineage graph'><defs><marker id=arrow viewBox='0 0 10 10' refX=9 "
           f"refY=5 markerWidth=7 markerHeight=7 orient=auto-start-reverse>"
           f"<path d='M0,0 L10,5 L0,10 z' fill='#8a8a90'/></marker></defs>"]
    for edge in graph.edges:
        if edge.parent not in where or edge.child not in where:
            continue
        (px, py), (cx, cy) = where[edge.parent], where[edge.child]
        x1, y1, x2, y2 = px + NODE_W / 2, py + NODE_H, cx + NODE_W / 2, cy
        mid = (y1 + y2) / 2
        label = (f"<text x='{(x1 + x2) / 2:.1f}' y='{mid + 4:.1f}' text-anchor=middle "
                 f"font-size=11 fill='#9a4f00' stroke=white stroke-width=4 "
                 f"paint-order=stroke>{escape(edge.label)}</text>") if edge.label else ""
        out.append(f"<g class=edge data-parent=\"{attr(edge.parent)}\" "
                   f"data-child=\"{attr(edge.child)}\"><path d='M{x1:.1f},{y1:.1f} C{x1:.1f},"
                   f"{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2 - 2:.1f}' fill=none "
                   f"stroke='#8a8a90' stroke-width=1.5 marker-end='url(#arrow)'/>{label}</g>")
    for node in graph.nodes.values():
        x, y = where[node.digest]
        v = node.version
        current = node.digest == graph.root
        fill, stroke = ("#e4efff", "#0b5cad") if current else (
            ("#f3f3f5", "#b8b8bf") if v is None else ("#ffffff", "#8a8a90"))
        title = node.digest if v is None else f"{v.ref} {node.digest}"
        name = node.digest[:19] + "…" if v is None else v.ref
        body = (f"<title>{escape(title)}</title>"
                f"<rect x='{x:.1f}' y='{y:.1f}' width='{NODE_W}' height='{NODE_H}' rx=6 "
                f"fill='{fill}' stroke='{stroke}' stroke-width='{2 if current else 1}'/>"
                f"<text x='{x + 10:.1f}' y='{y + 19:.1f}' font-size=13 font-weight=600 "
                f"fill='{'#0b5cad' if v is not None and not current else '#1d1d1f'}'>"
                f"{escape(_clip(name))}</text>"
                f"<text x='{x + 10:.1f}' y='{y + 37:.1f}' font-size=11 fill='#6b6b70'>"
                f"{escape(_clip(_subtitle(node), 36))}</text>")
        data = f"data-digest=\"{attr(node.digest)}\""
        if v is not None:
            data += f" data-ref=\"{attr(v.ref)}\""
        css = "node current" if current else ("node opaque" if v is None else "node")
        if v is not None and not v.deleted and not current:
            body = f"<a href=\"{attr(version_href(v))}\">{body}</a>"
        out.append(f"<g class=\"{css}\" {data}>{body}</g>")
    out.append("</svg>")
    return "".join(out)


def lineage_html(reg: Registry, version: VersionInfo) -> str:
    """The lineage section of a version page (empty when it has no relatives)."""
    graph = build_lineage(reg, version)
    if len(graph.nodes) == 1:
        return "<p class=muted>No parents or descendants.</p>"
    note = (f"<p class=muted>Only the nearest {MAX_NODES} ancestors and descendants are "
            f"drawn.</p>") if graph.truncated else ""
    return f"<div class=graph style='overflow-x:auto'>{lineage_svg(graph)}</div>{note}"
