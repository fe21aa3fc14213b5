"""Placing a view's boxes and routing its edges: a layered (Sugiyama) layout.

grandalf by default because it is pure Python (``pip install`` is enough);
Graphviz ``dot`` is used only when asked for (``engine="dot"`` or ``"auto"``
with ``dot`` on PATH), since the same report should not change with what
happens to be installed.
"""
from __future__ import annotations

import shutil
import subprocess
from typing import Dict, List, Set, Tuple

from grandalf.graphs import Edge, Vertex, graph_core
from grandalf.layouts import SugiyamaLayout, VertexViewer

from reportgen.render.architecture.view import Point, VEdge, View

XSPACE = 26
YSPACE = 34         # room between ranks for the shape labels


def pick_engine(engine: str) -> str:
    """'grandalf' unless 'dot' is asked for (or 'auto' and dot is installed)."""
    if engine not in ("auto", "grandalf", "dot"):
        raise ValueError(f"unknown layout engine {engine!r}; valid: 'auto', 'grandalf', 'dot'")
    if engine == "grandalf":
        return engine
    found = shutil.which("dot")
    if found is None:
        if engine == "dot":
            raise ValueError("layout engine 'dot' asked for but Graphviz 'dot' is not on PATH")
        return "grandalf"
    return "dot"


def lay_out(view: View, engine: str) -> None:
    """Fill in every box's centre and every edge's points; ``engine`` as :func:`pick_engine` returns it."""
    if engine == "dot":
        _layout_dot(view, shutil.which("dot"))
    else:
        _layout_grandalf(view)


def _layout_grandalf(view: View) -> None:
    """Sugiyama layout per connected component, components side by side."""
    verts = {}
    for v in view.nodes:
        gv = Vertex(v.id)
        gv.view = VertexViewer(v.w, v.h)
        verts[v.id] = gv
    x0 = 0.0
    for comp_nodes, comp_edges in _components(view):
        gedges = []
        for e in comp_edges:
            ge = Edge(verts[e.src], verts[e.dst])
            ge.view = _EdgeView()
            gedges.append((e, ge))
        core = graph_core([verts[n] for n in comp_nodes], [ge for _e, ge in gedges])
        sug = _Sugiyama(core)
        sug.xspace, sug.yspace = XSPACE, YSPACE
        sug.dw, sug.dh = 12, 12          # dummy vertices (long edges) stay thin
        roots = [verts[n] for n in comp_nodes if not any(e.dst == n for e in comp_edges)]
        sug.init_all(roots=roots)
        sug.draw(3)
        xs = [verts[n].view.xy[0] - verts[n].view.w / 2 for n in comp_nodes]
        shift = x0 - min(xs)
        for n in comp_nodes:
            x, y = verts[n].view.xy
            verts[n].view.xy = (x + shift, y)
        for e, ge in gedges:
            e.points = [(x + shift, y) for x, y in ge.view.pts]
        x0 = max(verts[n].view.xy[0] + verts[n].view.w / 2 for n in comp_nodes) + XSPACE * 2
    for v in view.nodes:
        v.x, v.y = verts[v.id].view.xy


class _Sugiyama(SugiyamaLayout):
    """grandalf's layout without its recursion, so any depth of model lays out.

    grandalf 0.8 recurses once per vertex along a path in two places, and
    raises the process-wide recursion limit to do so. Both are replaced by
    iterative equivalents that give the same layout: choosing the edges to
    invert (:func:`_feedback_edges`) and placing the blocks of Brandes &
    Köpf's horizontal compaction (:meth:`_place_block`).
    """

    def init_all(self, roots=None, inverted_edges=None, optimize=False):
        if roots is None:
            roots = [v for v in self.g.sV if not v.e_in()]
        if inverted_edges is None:
            inverted_edges = _feedback_edges(self.g, roots)
        super().init_all(roots=roots, inverted_edges=inverted_edges, optimize=optimize)

    def _coord_horizontal_compact(self):
        """grandalf's, with :meth:`_place_block` for its recursive block placement."""
        dirh, dirv = self.dirh, self.dirv
        g = self.grx
        layers = self.layers[::-dirv]
        for layer in layers:
            for v in layer[::dirh]:
                if g[v].root is v:
                    self._place_block(v)
        if dirh == -1:   # right-aligned: mirror
            for layer in layers:
                for v in layer:
                    if g[v].X:
                        g[v].X = -g[v].X
        inf = float("infinity")
        for layer in layers:   # every vertex takes its root's x, shifted by its class
            for v in layer[::dirh]:
                g[v].x[self.dirvh] = g[g[v].root].X
                shift = g[g[g[v].root].sink].shift
                if shift < inf:
                    g[v].x[self.dirvh] += dirh * shift
        for layer in self.layers:
            for v in layer:
                g[v].root = g[v].align = g[v].sink = v
                g[v].shift = inf
                g[v].X = None

    def _place_block(self, v) -> None:
        """Place the block rooted at ``v`` after the blocks before it in each of its layers.

        grandalf's recursive ``__place_block`` run on an explicit stack; a
        frame is [root, member being placed, (u, delta) waiting for block u].
        """
        g = self.grx
        if g[v].X is not None:
            return
        g[v].X = 0.0
        stack = [[v, v, None]]
        while stack:
            frame = stack[-1]
            root, w, waiting = frame
            if waiting is None:
                j = g[w].pos - self.dirh          # w's neighbour on the placed side
                layer = self.layers[g[w].rank]
                if not 0 <= j < len(layer):
                    frame[1] = g[w].align
                    if frame[1] is root:
                        stack.pop()
                    continue
                before = layer[j]
                u = g[before].root
                waiting = frame[2] = (u, self.xspace + (before.view.w + w.view.w) / 2.0)
                if g[u].X is None:                # place block u first, then come back
                    g[u].X = 0.0
                    stack.append([u, u, None])
                    continue
            u, delta = waiting
            frame[2] = None
            if g[root].sink is root:
                g[root].sink = g[u].sink
            if g[root].sink != g[u].sink:
                sink = g[u].sink
                g[sink].shift = min(g[sink].shift, g[root].X - (g[u].X + delta))
            else:
                g[root].X = max(g[root].X, g[u].X + delta)
            frame[1] = g[w].align
            if frame[1] is root:
                stack.pop()


def _feedback_edges(core: graph_core, roots: List[Vertex]) -> List[Edge]:
    """The edges grandalf's ``get_scs_with_feedback`` marks, found without recursion.

    A depth-first search from ``roots`` (then from every vertex not reached
    yet, in order) marks each edge that leads back to a vertex on the current
    path; inverting those makes the graph acyclic.
    """
    seen: Set[Vertex] = set()
    on_path: Set[Vertex] = set()
    back: Set[Edge] = set()
    for start in list(roots) + list(core.sV):
        if start in seen:
            continue
        seen.add(start)
        on_path.add(start)
        stack = [(start, iter(start.e_out()))]
        while stack:
            v, out = stack[-1]
            for e in out:
                w = e.v[1]
                if w not in seen:
                    seen.add(w)
                    on_path.add(w)
                    stack.append((w, iter(w.e_out())))
                    break
                if w in on_path:
                    back.add(e)
            else:
                stack.pop()
                on_path.discard(v)
    return [e for e in core.sE if e in back]


class _EdgeView:
    pts: List[Point] = []

    def setpath(self, pts: List[Point]) -> None:
        self.pts = [tuple(p) for p in pts]


def _components(view: View) -> List[Tuple[List[str], List[VEdge]]]:
    """Connected components in first-appearance order (deterministic, unlike grandalf's own)."""
    parent = {v.id: v.id for v in view.nodes}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for e in view.edges:
        parent[find(e.src)] = find(e.dst)
    groups: Dict[str, Tuple[List[str], List[VEdge]]] = {}
    for v in view.nodes:
        groups.setdefault(find(v.id), ([], []))[0].append(v.id)
    for e in view.edges:
        groups[find(e.src)][1].append(e)
    return list(groups.values())


def _layout_dot(view: View, dot: str) -> None:
    """Graphviz layout via ``dot -Tplain`` (inches, y up); edges come back as Bézier splines."""
    names = {v.id: f"n{i}" for i, v in enumerate(view.nodes)}
    lines = ["digraph G {", "rankdir=TB; nodesep=0.35; ranksep=0.45; splines=true;",
             "node [shape=box, fixedsize=true, label=\"\"];"]
    for v in view.nodes:
        lines.append(f"{names[v.id]} [width={v.w / 72:.4f}, height={v.h / 72:.4f}];")
    for i, e in enumerate(view.edges):
        lines.append(f"{names[e.src]} -> {names[e.dst]} [id=e{i}];")
    lines.append("}")
    out = subprocess.run([dot, "-Tplain"], input="\n".join(lines), capture_output=True, text=True,
                         timeout=60, check=True).stdout
    back = {n: vid for vid, n in names.items()}
    pos: Dict[str, Point] = {}
    splines: Dict[Tuple[str, str], List[List[Point]]] = {}
    height = 0.0
    for row in out.splitlines():
        f = row.split()
        if f and f[0] == "graph":
            height = float(f[3])
        elif f and f[0] == "node":
            pos[back[f[1]]] = (float(f[2]) * 72, (height - float(f[3])) * 72)
        elif f and f[0] == "edge":
            n = int(f[3])
            pts = [(float(f[4 + 2 * k]) * 72, (height - float(f[5 + 2 * k])) * 72) for k in range(n)]
            splines.setdefault((back[f[1]], back[f[2]]), []).append(pts)
    for v in view.nodes:
        v.x, v.y = pos[v.id]
    for e in view.edges:
        pts = splines.get((e.src, e.dst), [[]]).pop(0)
        if pts:
            e.points, e.bezier = pts, True
