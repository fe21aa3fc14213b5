"""The architecture diagram's views: which boxes and arrows each block level shows.

Why per-block views instead of one giant drawing: a ResNet-50 has ~180 ops; on
one canvas that is a wall of boxes.  Collapsing each block (``layer1``,
``layer1.0``, ``inception4a``) into one node keeps every view small enough to
read, and a click drills into the block's own view.  A view is plain data:
boxes with their text and size, edges with their shape labels; ``layout``
places them and ``svg`` draws them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from reportgen.analyses.architecture import ArchGraph, ArchNode

Point = Tuple[float, float]

CHAR_W = 6.6        # px per character at 11px monospace (0.6 em)
SUB_CHAR_W = 6.0    # px per character at 10px monospace
LINE_H = 13
PAD_X = 10
MAX_NAME = 30       # characters of a name shown in a box (full name in the tooltip)
MAX_CHAIN = 4       # blocks that are a straight chain of at most this many ops are drawn as one box
_SHORT_OP = {"BatchNorm1d": "BN", "BatchNorm2d": "BN", "BatchNorm3d": "BN", "relu": "ReLU", "relu_": "ReLU"}

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
