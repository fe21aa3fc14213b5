"""Inline SVG for the architecture diagram: one laid-out view per block level.

Why per-block views instead of one giant drawing: a ResNet-50 has ~180 ops; on
one canvas that is a wall of boxes.  Collapsing each block (``layer1``,
``layer1.0``, ``inception4a``) into one node keeps every view small enough to
read, and a click drills into the block's own view (pre-rendered, toggled by a
few lines of inline JS in the template partial).

Layout is a real layered (Sugiyama) layout: grandalf by default because it is
pure Python (``pip install`` is enough); Graphviz ``dot`` is used only when
asked for (``engine="dot"`` or ``"auto"`` with ``dot`` on PATH), since the
same report should not change with what happens to be installed.

Everything user-controlled (module names, class names, op arguments) is
escaped here: the template inserts the SVG with ``|safe``.  Colours come from
CSS classes and variables so light and dark themes both work.
"""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from reportgen.analyses.architecture import ArchGraph, ArchNode

Point = Tuple[float, float]

CHAR_W = 6.6        # px per character at 11px monospace (0.6 em)
SUB_CHAR_W = 6.0    # px per character at 10px monospace
LINE_H = 13
PAD_X = 10
XSPACE = 26
YSPACE = 34         # room between ranks for the shape labels
MAX_NAME = 30       # characters of a name shown in a box (full name in the tooltip)
MAX_ALT_NAMES = 24
ARROW = 6.0
MAX_CHAIN = 4       # blocks that are a straight chain of at most this many ops are drawn as one box
_SHORT_OP = {"BatchNorm1d": "BN", "BatchNorm2d": "BN", "BatchNorm3d": "BN", "relu": "ReLU", "relu_": "ReLU"}

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_SYMBOL = {"add": "+", "mul": "×", "sub": "−", "truediv": "÷", "matmul": "@"}
_KINDS = (  # (css suffix, substrings of the op name), first match wins
    ("conv", ("conv",)),
    ("norm", ("norm",)),
    ("act", ("relu", "gelu", "silu", "sigmoid", "tanh", "softmax", "hardswish", "mish", "elu", "swish",
             "prelu", "hardtanh", "hardsigmoid")),
    ("pool", ("pool",)),
    ("linear", ("linear", "bilinear", "embedding")),
    ("drop", ("dropout", "identity")),
)


# ----------------------------------------------------------------------------- small helpers


def esc(text: Any) -> str:
    """XML-escape text for element content *and* attribute values; drop XML-illegal chars."""
    return html.escape(_CTRL.sub("", str(text)), quote=True)


def fmt_shape(shape: Optional[Sequence[int]]) -> str:
    """(1, 64, 32, 32) -> '64×32×32': the batch dimension is noise in a diagram."""
    if not shape:
        return ""
    dims = shape[1:] if len(shape) > 1 else shape
    return "×".join(str(int(d)) for d in dims)


def fmt_params(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _shorten(text: str, limit: int = MAX_NAME) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _pair(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return str(v[0]) if len(set(v)) == 1 else "×".join(map(str, v))
    return str(v)


def _kernel(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "×".join(map(str, v))
    return f"{v}×{v}"


def _op_kind(node: ArchNode) -> str:
    if node.kind in ("input", "output"):
        return "io"
    name = node.op.lower()
    for kind, keys in _KINDS:
        if any(k in name for k in keys):
            return kind
    return "fn" if node.kind == "function" else "mod"


def _op_summary(node: ArchNode) -> str:
    """'Conv2d 3×3 /2' — the few attributes that tell layers apart at a glance."""
    a = node.attrs
    parts = [node.op]
    if "kernel_size" in a:
        parts.append(_kernel(a["kernel_size"]))
    if "stride" in a and a["stride"] not in (1, (1, 1), (1,), None) and "kernel_size" in a:
        parts.append("/" + _pair(a["stride"]))
    if a.get("groups") not in (None, 1):
        parts.append(f"g{a['groups']}")
    if "in_features" in a and "out_features" in a:
        parts.append(f"{a['in_features']}→{a['out_features']}")
    if "output_size" in a and "kernel_size" not in a:
        parts.append("→" + _pair(a["output_size"]))
    if "p" in a and isinstance(a["p"], float):
        parts.append(f"p={a['p']:g}")
    return " ".join(parts)


# ----------------------------------------------------------------------------- view model


@dataclass
class VNode:
    """A box in one view: a leaf op, a collapsed block, or an in/out port."""

    id: str
    kind: str                       # "op" | "fn" | "block" | "port"
    css: str                        # extra css class (op kind)
    lines: List[Tuple[str, str]]    # (text, css class) per line, unescaped
    title: str                      # hover text, unescaped
    open_view: Optional[str] = None  # view id a click opens (blocks)
    aria: str = ""
    w: float = 0.0
    h: float = 0.0
    x: float = 0.0                  # centre, filled by the layout
    y: float = 0.0


@dataclass
class VEdge:
    src: str
    dst: str
    shape: str
    title: str
    show_label: bool = True
    points: List[Point] = field(default_factory=list)
    bezier: bool = False            # points are cubic Bézier control points (dot)


@dataclass
class View:
    id: str
    path: str
    nodes: List[VNode]
    edges: List[VEdge]
    children: List[Tuple[str, str]]   # (block path, view id) drawn in this view


class _Tree:
    """Which graph node stands for which box at a given block level."""

    def __init__(self, graph: ArchGraph):
        self.graph = graph
        self.blocks = graph.blocks
        self.nodes = {n.id: n for n in graph.nodes}

    def rep(self, node: ArchNode, path: str) -> Optional[str]:
        """The child of block ``path`` containing ``node`` ("n:<id>" / "b:<path>"), None if outside."""
        if node.parent == path:
            return "n:" + node.id
        prefix = path + "." if path else ""
        if not node.parent.startswith(prefix):
            return None
        head = node.parent[len(prefix):].split(".", 1)[0]
        return "b:" + prefix + head

    def inside(self, path: str) -> List[ArchNode]:
        return [n for n in self.graph.nodes if n.parent == path or n.parent.startswith(path + ".")]

    def chain(self, path: str) -> Optional[List[ArchNode]]:
        """The ops of block ``path`` in order if it is a short straight chain (Conv-BN-ReLU), else None.

        Such blocks are drawn as one box listing their ops instead of getting a
        view of their own: a view of three boxes in a row says less than one
        line of text, and GoogLeNet alone has 57 of them.
        """
        nodes = self.inside(path)
        if not 1 <= len(nodes) <= MAX_CHAIN or any(n.kind not in ("module", "function") for n in nodes):
            return None
        ids = [n.id for n in nodes]
        inner = [e for e in self.graph.edges if e.src in ids and e.dst in ids]
        enters = {e.dst for e in self.graph.edges if e.dst in ids and e.src not in ids}
        leaves = {e.src for e in self.graph.edges if e.src in ids and e.dst not in ids}
        straight = all((ids[k], ids[k + 1]) in {(e.src, e.dst) for e in inner} for k in range(len(ids) - 1))
        if len(inner) != len(ids) - 1 or not straight or not enters <= {ids[0]} or not leaves <= {ids[-1]}:
            return None
        return nodes


def _block_shapes(graph: ArchGraph, tree: _Tree, path: str) -> Tuple[str, str]:
    inside = {n.id for n in tree.inside(path)}
    ins = [e.shape for e in graph.edges if e.dst in inside and e.src not in inside]
    outs = [e.shape for e in graph.edges if e.src in inside and e.dst not in inside]
    return fmt_shape(ins[0]) if ins else "", fmt_shape(outs[0]) if outs else ""


def _node_box(node: ArchNode, graph: ArchGraph, in_shapes: List[str]) -> VNode:
    kind = _op_kind(node)
    if node.kind in ("input", "output"):
        text = f"{node.label} {fmt_shape(node.shape)}".strip()
        return VNode(node.id, "port", "arch-k-io", [(text, "arch-name")],
                     f"{node.label}: {fmt_shape(node.shape) or '?'}")
    details = [f"{node.path or node.label} — {node.op}"]
    if node.attrs.get("repr"):
        details.append(str(node.attrs["repr"]))
    other = {k: v for k, v in node.attrs.items() if k != "repr"}
    if node.kind == "function" and other:
        details.append(", ".join(f"{k}={v}" for k, v in other.items()))
    if node.params:
        details.append(f"params: {node.params:,}")
    details.append(f"in: {', '.join(in_shapes) or '?'} → out: {fmt_shape(node.shape) or '?'}")
    if node.parent:
        details.append(f"in block: {node.parent}")
    title = "\n".join(details)
    if node.kind == "function":
        text = _SYMBOL.get(node.op, node.op)
        return VNode(node.id, "fn", f"arch-k-{kind}", [(text, "arch-name")], title)
    return VNode(node.id, "op", f"arch-k-{kind}",
                 [(_shorten(node.label), "arch-name"), (_shorten(_op_summary(node), 34), "arch-sub")], title)


def _block_box(path: str, graph: ArchGraph, tree: _Tree, view_id: str) -> VNode:
    block = graph.blocks[path]
    shape_in, shape_out = _block_shapes(graph, tree, path)
    io = f"{shape_in} → {shape_out}" if shape_in or shape_out else ""
    lines = [(_shorten(path), "arch-name"), (_shorten(block.type, 34), "arch-sub")]
    if io:
        lines.append((io, "arch-sub"))
    lines.append((f"{fmt_params(block.params)} params", "arch-sub"))
    title = "\n".join([f"{path} — {block.type}", f"params: {block.params:,}",
                       f"in: {shape_in or '?'} → out: {shape_out or '?'}", "click to expand"])
    return VNode("b-" + view_id, "block", "arch-block", lines, title, open_view=view_id,
                 aria=f"Expand {path} ({block.type})")


def _chain_box(path: str, graph: ArchGraph, ops: List[ArchNode], in_shapes: Dict[str, List[str]]) -> VNode:
    """One box for a short chain block: its name, type and its ops in a line."""
    block = graph.blocks[path]
    steps = [_op_summary(n) if n is ops[0] else _SHORT_OP.get(n.op, n.op) for n in ops]
    title = [f"{path} — {block.type} ({' → '.join(n.op for n in ops)})", f"params: {block.params:,}"]
    for n in ops:
        title.append(f"· {n.label}: {n.attrs.get('repr') or n.op}")
    title.append(f"in: {', '.join(in_shapes.get(ops[0].id, [])) or '?'} → out: {fmt_shape(ops[-1].shape) or '?'}")
    lines = [(_shorten(path), "arch-name"), (_shorten(block.type, 34), "arch-sub"),
             (_shorten(" · ".join(steps), 40), "arch-sub")]
    return VNode("c-" + ops[0].id, "op", f"arch-chain arch-k-{_op_kind(ops[0])}", lines, "\n".join(title))


def _size(v: VNode) -> None:
    if v.kind == "fn" and len(v.lines[0][0]) <= 2:
        v.w = v.h = 22.0
        return
    widths = [len(t) * (SUB_CHAR_W if c == "arch-sub" else CHAR_W) for t, c in v.lines]
    v.w = float(max(widths) + 2 * PAD_X + (14 if v.kind == "block" else 0))
    v.w = max(v.w, 40.0 if v.kind in ("fn", "port") else 70.0)
    v.h = float(len(v.lines) * LINE_H + (8 if v.kind in ("fn", "port") else 12))


def build_views(graph: ArchGraph, uid: str = "arch") -> List[View]:
    """One View per block that appears in the diagram, the model first (breadth-first)."""
    tree = _Tree(graph)
    ids: Dict[str, str] = {"": f"{uid}-v0"}
    order = [""]
    views: List[View] = []
    i = 0
    while i < len(order):
        path = order[i]
        i += 1
        view = _build_view(graph, tree, path, ids[path], ids, uid)
        for child, _vid in view.children:
            if child not in order:
                order.append(child)
        views.append(view)
    return views


def _build_view(graph: ArchGraph, tree: _Tree, path: str, view_id: str, ids: Dict[str, str], uid: str) -> View:
    boxes: Dict[str, VNode] = {}
    order: List[str] = []
    children: List[Tuple[str, str]] = []
    in_shapes: Dict[str, List[str]] = {}
    for e in graph.edges:
        in_shapes.setdefault(e.dst, []).append(fmt_shape(e.shape))

    def box_for(rep: str) -> VNode:
        if rep not in boxes:
            ops = tree.chain(rep[2:]) if rep.startswith("b:") else None
            if ops:
                boxes[rep] = _chain_box(rep[2:], graph, ops, in_shapes)
            elif rep.startswith("b:"):
                bpath = rep[2:]
                if bpath not in ids:
                    ids[bpath] = f"{uid}-v{len(ids)}"
                boxes[rep] = _block_box(bpath, graph, tree, ids[bpath])
                children.append((bpath, ids[bpath]))
            else:
                node = tree.nodes[rep[2:]]
                boxes[rep] = _node_box(node, graph, in_shapes.get(node.id, []))
            order.append(rep)
        return boxes[rep]

    for n in graph.nodes:  # boxes in execution order: keeps the layout stable and readable
        r = tree.rep(n, path)
        if r is not None:
            box_for(r)
    edges: Dict[Tuple[str, str], VEdge] = {}
    ports: Dict[str, VNode] = {}
    for e in graph.edges:
        a, b = tree.rep(tree.nodes[e.src], path), tree.rep(tree.nodes[e.dst], path)
        if a is None and b is None or a == b:
            continue
        src_node, dst_node = tree.nodes[e.src], tree.nodes[e.dst]
        if a is None:
            a = _port(ports, "in", src_node, e.shape, len([p for p in ports if p.startswith("in")]))
        if b is None:
            b = _port(ports, "out", src_node, e.shape, len([p for p in ports if p.startswith("out")]))
        if (a, b) not in edges:
            label = fmt_shape(e.shape)
            edges[(a, b)] = VEdge(a, b, label, f"{src_node.path or src_node.label} → "
                                                 f"{dst_node.path or dst_node.label}: {label or '?'}")
    nodes = [ports[k] for k in ports if k.startswith("in")] + [boxes[r] for r in order] \
        + [ports[k] for k in ports if k.startswith("out")]
    for v in nodes:
        _size(v)
    id_map = {**ports, **boxes}
    vedges = [VEdge(id_map[a].id, id_map[b].id, e.shape, e.title) for (a, b), e in edges.items()]
    _dedupe_labels(vedges)
    return View(view_id, path, nodes, vedges, children)


def _port(ports: Dict[str, VNode], side: str, src: ArchNode, shape, count: int) -> str:
    """One in-port per outside producer, one out-port per inside producer."""
    key = f"{side}:{src.id}"
    if key not in ports:
        name = side if count == 0 else f"{side} {count + 1}"
        ports[key] = VNode(f"p-{side}-{count}", "port", "arch-k-io", [(name, "arch-name")],
                           f"{name}: {fmt_shape(shape) or '?'} ({'from' if side == 'in' else 'produced by'} "
                           f"{src.path or src.label})")
    return key


def _dedupe_labels(edges: List[VEdge]) -> None:
    """A fan-out of one tensor gets its shape written once, not on every branch."""
    seen: Dict[Tuple[str, str], bool] = {}
    for e in edges:
        if (e.src, e.shape) in seen:
            e.show_label = False
        seen[(e.src, e.shape)] = True


# ----------------------------------------------------------------------------- layout engines


def _layout_grandalf(view: View) -> None:
    """Sugiyama layout per connected component, components side by side."""
    from grandalf.graphs import Edge, Vertex, graph_core
    from grandalf.layouts import SugiyamaLayout, VertexViewer

    verts = {}
    for v in view.nodes:
        gv = Vertex(v.id)
        gv.view = VertexViewer(v.w, v.h)
        verts[v.id] = gv
    comps = _components(view)
    x0 = 0.0
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 10 * len(view.nodes) + 1000))
    try:
        for comp_nodes, comp_edges in comps:
            gedges = []
            for e in comp_edges:
                ge = Edge(verts[e.src], verts[e.dst])
                ge.view = _EdgeView()
                gedges.append((e, ge))
            core = graph_core([verts[n] for n in comp_nodes], [ge for _e, ge in gedges])
            sug = SugiyamaLayout(core)
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
    finally:
        sys.setrecursionlimit(old_limit)
    for v in view.nodes:
        v.x, v.y = verts[v.id].view.xy


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


# ----------------------------------------------------------------------------- SVG drawing


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


# ----------------------------------------------------------------------------- entry point


def _alt_text(graph: ArchGraph, view: View) -> str:
    if view.path:
        block = graph.blocks[view.path]
        what = f"block {view.path} ({block.type})"
    else:
        what = f"the model ({graph.blocks[''].type if '' in graph.blocks else 'model'})"
    names = [v.lines[0][0] for v in view.nodes if v.kind != "port"]
    shown = ", ".join(names[:MAX_ALT_NAMES]) + (", …" if len(names) > MAX_ALT_NAMES else "")
    merges = sum(1 for v in view.nodes if sum(1 for e in view.edges if e.dst == v.id) >= 2)
    return (f"Dataflow diagram of {what}: {len(names)} parts in order — {shown}. "
            f"{merges} point(s) where paths merge (residual additions or concatenations).")


def render_architecture(graph: ArchGraph, engine: str = "grandalf", uid: str = "arch") -> Dict[str, Any]:
    """Lay out and draw every view of ``graph``; returns the dict the partial expects.

    Keys: ``uid`` (DOM id prefix), ``views`` (list of dicts: ``id``, ``path``,
    ``title``, ``crumbs`` [{label, id}], ``children`` [{label, id}], ``svg``,
    ``alt``), ``method``, ``note``, ``engine``, ``n_nodes``, ``n_edges``,
    ``n_blocks``, ``n_params``, ``model_type``.
    """
    used = pick_engine(engine)
    dot = shutil.which("dot") if used == "dot" else None
    views = build_views(graph, uid)
    by_path = {v.path: v for v in views}
    out = []
    for view in views:
        if dot:
            _layout_dot(view, dot)
        else:
            _layout_grandalf(view)
        alt = _alt_text(graph, view)
        out.append({
            "id": view.id,
            "path": view.path,
            "title": view.path or "model",
            "type": graph.blocks[view.path].type if view.path in graph.blocks else "",
            "crumbs": _crumbs(view.path, by_path),
            "children": [{"label": p, "id": vid} for p, vid in view.children],
            "svg": draw_view(view, alt),
            "alt": alt,
        })
    return {
        "uid": uid,
        "views": out,
        "method": graph.method,
        "note": graph.note,
        "engine": used,
        "n_nodes": len(graph.nodes),
        "n_edges": len(graph.edges),
        "n_blocks": max(len(graph.blocks) - 1, 0),
        "n_params": graph.total_params(),
        "model_type": graph.blocks[""].type if "" in graph.blocks else "",
    }


def _crumbs(path: str, by_path: Dict[str, View]) -> List[Dict[str, str]]:
    """Breadcrumb from the model down to ``path``, skipping levels that have no view."""
    crumbs = [{"label": "model", "id": by_path[""].id}]
    if not path:
        return crumbs
    parts = path.split(".")
    for k in range(1, len(parts) + 1):
        p = ".".join(parts[:k])
        if p in by_path:
            crumbs.append({"label": p, "id": by_path[p].id})
    return crumbs
