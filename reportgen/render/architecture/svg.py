"""SVG markup of a laid-out view.

Everything user-controlled (module names, class names, op arguments) is
escaped here: the template inserts the SVG with ``|safe``.  Colours come from
CSS classes and variables so light and dark themes both work.
"""
from __future__ import annotations

import html
import re
from typing import Any, Dict, List

from reportgen.render.architecture.view import LINE_H, Point, VEdge, View, VNode

ARROW = 6.0
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def esc(text: Any) -> str:
    """XML-escape text for element content *and* attribute values; drop XML-illegal chars."""
    return html.escape(_CTRL.sub("", str(text)), quote=True)


def _r(v: float) -> str:
    """Coordinates rounded to 0.5 px: smaller SVG, identical across runs."""
    s = f"{round(v * 2) / 2:.1f}"
    return s[:-2] if s.endswith(".0") else s


def _attach_ends(view: View) -> None:
    """Start edges at the bottom of their source, end them above their target, fanned out.

    Only for grandalf routes (centre to centre); dot already clips its splines.
    """
    by_id = {v.id: v for v in view.nodes}
    outs: Dict[str, List[VEdge]] = {}
    ins: Dict[str, List[VEdge]] = {}
    for e in view.edges:
        if e.bezier:
            continue
        if not e.points:
            s, d = by_id[e.src], by_id[e.dst]
            e.points = [(s.x, s.y), (d.x, d.y)]
        outs.setdefault(e.src, []).append(e)
        ins.setdefault(e.dst, []).append(e)
    for vid, group in outs.items():
        v = by_id[vid]
        group.sort(key=lambda e: e.points[1][0])
        for k, e in enumerate(group):
            e.points[0] = (v.x + _fan(k, len(group), v.w), v.y + v.h / 2)
    for vid, group in ins.items():
        v = by_id[vid]
        group.sort(key=lambda e: e.points[-2][0])
        for k, e in enumerate(group):
            e.points[-1] = (v.x + _fan(k, len(group), v.w), v.y - v.h / 2 - ARROW)


def _fan(k: int, n: int, width: float) -> float:
    step = min(14.0, (width - 8) / max(n, 1))
    return (k - (n - 1) / 2) * step


def _edge_path(e: VEdge) -> str:
    pts = e.points
    if e.bezier:
        d = f"M{_r(pts[0][0])},{_r(pts[0][1])}C" + " ".join(f"{_r(x)},{_r(y)}" for x, y in pts[1:])
        return d
    d = [f"M{_r(pts[0][0])},{_r(pts[0][1])}"]
    for (ax, ay), (bx, by) in zip(pts, pts[1:]):
        my = (ay + by) / 2
        d.append(f"C{_r(ax)},{_r(my)} {_r(bx)},{_r(my)} {_r(bx)},{_r(by)}")
    return "".join(d)


def _label_pos(e: VEdge, t: float = 0.35) -> Point:
    """A point a third of the way down the edge's first curve: near the producer, so labels
    of edges converging on one merge node stay apart."""
    p0 = e.points[0]
    if e.bezier:
        p1, p2, p3 = e.points[1], e.points[2], e.points[3]
    else:
        b = e.points[1]
        my = (p0[1] + b[1]) / 2
        p1, p2, p3 = (p0[0], my), (b[0], my), b
    u = 1 - t
    x = u ** 3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * p3[0]
    y = u ** 3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * p3[1]
    return x + 5, y + 4


def _arrow(e: VEdge) -> str:
    """Arrowhead whose base is the edge's end, pointing along the end tangent."""
    (px, py), (x, y) = e.points[-2], e.points[-1]
    if not e.bezier:
        px, py = x, y - 1  # grandalf curves end vertically
    norm = max(((x - px) ** 2 + (y - py) ** 2) ** 0.5, 1e-6)
    dx, dy = (x - px) / norm, (y - py) / norm
    tip = (x + dx * ARROW, y + dy * ARROW)
    left = (x - dy * 3.5, y + dx * 3.5)
    right = (x + dy * 3.5, y - dx * 3.5)
    return "M" + " ".join(f"{_r(a)},{_r(b)}" for a, b in (tip, left, right)) + "z"


def _svg_edge(e: VEdge) -> str:
    skip = len(e.points) > (4 if e.bezier else 2)
    cls = "arch-edge arch-skip" if skip else "arch-edge"
    return (f'<g class="{cls}"><title>{esc(e.title)}</title><path d="{_edge_path(e)}"/>'
            f'<path class="arch-head" d="{_arrow(e)}"/></g>')


def _svg_node(v: VNode) -> str:
    x, y, w, h = v.x - v.w / 2, v.y - v.h / 2, v.w, v.h
    attrs = f'class="arch-node arch-{v.kind} {v.css}"'
    if v.open_view:
        attrs += f' data-arch-open="{esc(v.open_view)}" tabindex="0" role="button" aria-label="{esc(v.aria)}"'
    parts = [f"<g {attrs}><title>{esc(v.title)}</title>"]
    if v.kind == "block":
        parts.append(f'<rect class="arch-stack" x="{_r(x + 4)}" y="{_r(y + 4)}" width="{_r(w)}" '
                     f'height="{_r(h)}" rx="6"/>')
    rx = h / 2 if v.kind in ("fn", "port") else 5
    box = f'x="{_r(x)}" y="{_r(y)}" width="{_r(w)}" height="{_r(h)}" rx="{_r(rx)}"'
    if v.kind == "block":  # opaque backing so the stack edge does not show through the tint
        parts.append(f'<rect class="arch-back" {box}/>')
    parts.append(f'<rect {box}/>')
    ty = v.y - (len(v.lines) - 1) * LINE_H / 2 + 4
    tx = v.x - (7 if v.kind == "block" else 0)
    for k, (text, cls) in enumerate(v.lines):
        parts.append(f'<text class="{cls}" x="{_r(tx)}" y="{_r(ty + k * LINE_H)}">{esc(text)}</text>')
    if v.kind == "block":
        parts.append(f'<text class="arch-more" x="{_r(x + w - 10)}" y="{_r(v.y + 4)}">+</text>')
    parts.append("</g>")
    return "".join(parts)


def _svg_label(e: VEdge) -> str:
    x, y = _label_pos(e)
    return f'<text class="arch-elabel" x="{_r(x)}" y="{_r(y)}">{esc(e.shape)}</text>'


def draw_view(view: View, alt: str) -> str:
    """The SVG markup of one laid-out view."""
    _attach_ends(view)
    xs = [v.x - v.w / 2 for v in view.nodes] + [p[0] for e in view.edges for p in e.points]
    xe = [v.x + v.w / 2 + 4 for v in view.nodes] + [p[0] + 8 * max(len(e.shape), 1) for e in view.edges
                                                    for p in e.points[:2]]
    ys = [v.y - v.h / 2 for v in view.nodes]
    ye = [v.y + v.h / 2 + 4 for v in view.nodes]
    m = 8
    x0, y0 = min(xs) - m, min(ys) - m
    width, height = max(xe) - x0 + m, max(ye) - y0 + m
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="arch-svg" role="img" aria-label="{esc(alt)}" '
            f'viewBox="{_r(x0)} {_r(y0)} {_r(width)} {_r(height)}" width="{_r(width)}" height="{_r(height)}">')
    body = ['<g class="arch-edges">', *(_svg_edge(e) for e in view.edges), "</g>",
            '<g class="arch-nodes">', *(_svg_node(v) for v in view.nodes), "</g>",
            '<g class="arch-elabels">', *(_svg_label(e) for e in view.edges if e.show_label and e.shape), "</g>"]
    return head + "".join(body) + "</svg>"
