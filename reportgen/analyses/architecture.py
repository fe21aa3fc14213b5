"""The model's real dataflow graph, with tensor shapes and its module hierarchy.

Why a traced graph rather than ``print(model)``: the module tree says what a
model *owns*, not how data flows.  Residual adds, concatenations of branches
and functional ops (``torch.flatten``, ``F.relu``) live in ``forward`` code and
only show up in a trace.

Two tracers, one result type:

* ``fx``: ``torch.fx`` symbolic tracing plus ``ShapeProp`` (one real forward
  pass for the shapes).  Exact and cheap, but fails on data-dependent control
  flow (``if x.sum() > 0``) and some dynamic Python.
* ``hooks``: the fallback.  Runs the model once for real, recording leaf
  modules with forward (pre-)hooks and functional tensor ops with a
  ``TorchFunctionMode``; edges come from tensor identity (which recorded call
  produced the object a later call consumes).  It follows whatever branch the
  example took, so it works on any model that runs.

Both give an :class:`ArchGraph`: plain data (no tensors, no HTML) that the SVG
renderer lays out.  Ops that do not reach the output (control-flow probes such
as ``x.sum() > 0``, dead code) are pruned so the picture shows the dataflow only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import torch
from torch import nn

from reportgen.model import fxops

Shape = Optional[Tuple[int, ...]]

# Attributes worth showing in a hover card, read off a module when present.
_MODULE_ATTRS = (
    "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
    "groups", "in_features", "out_features", "num_features", "normalized_shape",
    "output_size", "p", "negative_slope", "num_heads", "embed_dim", "scale_factor", "mode",
)
_MAX_REPR = 240


@dataclass
class ArchNode:
    """One recorded call: a leaf module, a functional op, the input or the output."""

    id: str                    # unique, stable ([A-Za-z0-9_])
    label: str                 # short display name: "conv1", "add", "cat"
    kind: str                  # "input" | "output" | "module" | "function"
    op: str                    # module class name ("Conv2d") or function name ("add")
    path: str = ""             # dotted module name for modules, "" otherwise
    parent: str = ""           # dotted name of the enclosing block ("" = the model)
    params: int = 0
    shape: Shape = None        # (first) output tensor shape, batch dim included
    attrs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ArchEdge:
    src: str
    dst: str
    shape: Shape = None        # shape of the tensor flowing along the edge


@dataclass
class ArchBlock:
    """A non-leaf module that groups nodes: what the diagram collapses."""

    path: str                  # "" is the model itself
    type: str
    params: int


@dataclass
class ArchGraph:
    nodes: List[ArchNode]
    edges: List[ArchEdge]
    blocks: Dict[str, ArchBlock]
    method: str                # "fx" or "hooks"
    note: str = ""             # why the fallback was used, if it was

    def node(self, node_id: str) -> ArchNode:
        return self._index()[node_id]

    def _index(self) -> Dict[str, ArchNode]:
        return {n.id: n for n in self.nodes}

    def in_degree(self, node_id: str) -> int:
        """Number of distinct producers feeding ``node_id``."""
        return len({e.src for e in self.edges if e.dst == node_id})

    def total_params(self) -> int:
        root = self.blocks.get("")
        return root.params if root else sum(n.params for n in self.nodes)


# ----------------------------------------------------------------------------- entry point


def trace_graph(model: nn.Module, example: Any, method: str = "auto") -> ArchGraph:
    """Trace ``model`` on ``example`` (a tensor or a tuple of positional inputs).

    ``method``: "auto" (fx, falling back to hooks), "fx" or "hooks".  The
    model's hooks and train/eval flags are left exactly as found.
    """
    from reportgen.model.hooks import eval_mode

    if method not in ("auto", "fx", "hooks"):
        raise ValueError(f"unknown trace method {method!r}; valid: 'auto', 'fx', 'hooks'")
    inputs = example if isinstance(example, tuple) else (example,)
    note = ""
    with torch.no_grad(), eval_mode(model):
        if method in ("auto", "fx"):
            try:
                nodes, edges = _trace_fx(model, inputs)
                return _finish(model, nodes, edges, "fx", "")
            except Exception as exc:  # noqa: BLE001  (any tracing failure means: fall back)
                if method == "fx":
                    raise
                note = _one_line(f"torch.fx could not trace the model ({type(exc).__name__}: {exc})")
        nodes, edges = _trace_hooks(model, inputs)
    return _finish(model, nodes, edges, "hooks", note)


# ----------------------------------------------------------------------------- shared helpers


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_leaf(module: nn.Module) -> bool:
    """Leaf = a torch.nn building block (not a container) or a module without children.

    Childless custom modules count as leaves so both tracers agree and a
    custom op shows as one box named after its class.
    """
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    is_torch_nn = type(module).__module__.startswith("torch.nn") and not type(module).__module__.startswith(
        "torch.nn.modules.container")
    return is_torch_nn or not any(True for _ in module.children())


def _parent_path(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _short_value(v: Any) -> Any:
    """A JSON-friendly, short version of a module attribute or op argument."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v if not isinstance(v, str) else _one_line(v, 60)
    if isinstance(v, torch.Size):
        return tuple(int(x) for x in v)
    if isinstance(v, (tuple, list)) and all(isinstance(x, (int, float, bool)) for x in v):
        return tuple(v) if len(v) <= 8 else _one_line(repr(v), 60)
    if torch.is_tensor(v):
        return f"tensor{tuple(v.shape)}"
    return _one_line(repr(v), 60)


def _module_attrs(module: nn.Module) -> Dict[str, Any]:
    attrs: Dict[str, Any] = {}
    for name in _MODULE_ATTRS:
        if hasattr(module, name):
            val = getattr(module, name)
            if isinstance(val, (int, float, str, bool, tuple, list, torch.Size)) and not isinstance(val, nn.Module):
                attrs[name] = _short_value(val)
    try:
        extra = module.extra_repr()
    except Exception:  # noqa: BLE001  (a user's extra_repr must not break the report)
        extra = ""
    if extra:
        attrs["repr"] = _one_line(f"{type(module).__name__}({extra})", _MAX_REPR)
    return attrs


def _module_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _fn_name(target: Any) -> str:
    """'add' for operator.add, torch.add, Tensor.__add__, Tensor.__iadd__, Tensor.add_..."""
    name = target if isinstance(target, str) else getattr(target, "__name__", None) or repr(target)
    name = name.strip("_")
    for prefix in ("i", "r"):
        if name.startswith(prefix) and name[1:] in ("add", "sub", "mul", "truediv", "matmul", "and", "or"):
            name = name[1:]
    if name.endswith("_") and len(name) > 1:
        name = name[:-1]
    return name or "op"


def _op_args(args: Tuple, kwargs: Dict[str, Any], is_tensorish: Callable[[Any], bool]) -> Dict[str, Any]:
    """Non-tensor arguments of a functional op (dim=1 for cat, start_dim for flatten)."""
    shown = [_short_value(a) for a in args if not _contains(a, is_tensorish)]
    attrs: Dict[str, Any] = {}
    if shown:
        attrs["args"] = _one_line(", ".join(repr(s) if isinstance(s, str) else str(s) for s in shown), 80)
    for k in sorted(kwargs):
        if not _contains(kwargs[k], is_tensorish):
            attrs[k] = _short_value(kwargs[k])
    return attrs


def _leaves(obj: Any) -> Iterator[Any]:
    """Leaves of nested tuples/lists/dicts (dicts in key order as given)."""
    if isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _leaves(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _leaves(x)
    elif hasattr(obj, "__dataclass_fields__") and not torch.is_tensor(obj):
        for name in obj.__dataclass_fields__:
            yield from _leaves(getattr(obj, name, None))
    else:
        yield obj


def _contains(obj: Any, pred: Callable[[Any], bool]) -> bool:
    return any(pred(x) for x in _leaves(obj))


# ----------------------------------------------------------------------------- torch.fx tracer


class _LeafTracer(fxops.Tracer):
    """fx tracer whose leaves match :func:`_is_leaf` (so the hooks fallback agrees), plus
    timm's own fx leaves on a timm model (``Conv2dSame``, ``BatchNormAct2d``)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_leaf(m) or type(m) in self.extra_leaves


def _meta_shapes(meta: Any) -> List[Tuple[int, ...]]:
    from torch.fx.passes.shape_prop import TensorMetadata

    if isinstance(meta, TensorMetadata):
        return [tuple(int(s) for s in meta.shape)]
    if isinstance(meta, (tuple, list)):
        return [s for m in meta for s in _meta_shapes(m)]
    if isinstance(meta, dict):
        return [s for m in meta.values() for s in _meta_shapes(m)]
    return []


def _is_fx_node(a: Any) -> bool:
    return isinstance(a, torch.fx.Node)


def _trace_fx(model: nn.Module, inputs: Tuple) -> Tuple[List[ArchNode], List[ArchEdge]]:
    """Symbolic trace + ShapeProp, turned into ArchNodes (getitem on tuples folded away)."""
    from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

    tracer = _LeafTracer(model)
    graph = tracer.trace(model)
    gm = torch.fx.GraphModule(tracer.root, graph)
    ShapeProp(gm).propagate(*inputs)

    def meta(n: torch.fx.Node) -> Any:
        return n.meta.get("tensor_meta")

    def is_tensor_node(n: torch.fx.Node) -> bool:
        return isinstance(meta(n), TensorMetadata)

    nodes: List[ArchNode] = []
    kept: Set[str] = set()
    # fx node name -> (kept producer id, shape) for nodes folded into their producer
    folded: Dict[str, Tuple[str, Shape]] = {}
    modules = dict(gm.named_modules())

    # x.relu_() with its result ignored (or relu(x, inplace=True), x += y): fx keeps
    # feeding later users the old proxy `x`; those uses really read the in-place
    # op's result, so reroute them (the hooks tracer sees the same by tensor identity).
    mutated: Dict[str, Tuple[str, Shape]] = {}

    def resolve(n: Any) -> Optional[Tuple[str, Shape]]:
        if not isinstance(n, torch.fx.Node):
            return None
        if n.name in mutated:
            return mutated[n.name]
        if n.name in kept:
            shapes = _meta_shapes(meta(n))
            return n.name, (shapes[0] if shapes else None)
        return folded.get(n.name)

    edges: List[ArchEdge] = []

    def connect(node_id: str, args: Any) -> None:
        for a in _leaves(args):
            src = resolve(a)
            if src is not None:
                edges.append(ArchEdge(src[0], node_id, src[1]))

    for n in gm.graph.nodes:
        shapes = _meta_shapes(meta(n))
        shape = shapes[0] if shapes else None
        stack = n.meta.get("nn_module_stack") or {}
        scope = list(stack.values())[-1][0] if stack else ""
        if n.op == "placeholder":
            nodes.append(ArchNode(n.name, n.name, "input", "input", shape=shape))
        elif n.op == "output":
            nodes.append(ArchNode("output", "output", "output", "output", shape=shape))
            connect("output", n.args)
            continue
        elif n.op == "get_attr":
            continue  # a parameter/buffer/constant: not dataflow worth drawing
        elif n.op == "call_module":
            mod = modules[n.target]
            nodes.append(ArchNode(n.name, n.target.rsplit(".", 1)[-1], "module", type(mod).__name__,
                                  path=n.target, parent=_parent_path(n.target), params=_module_params(mod),
                                  shape=shape, attrs=_module_attrs(mod)))
        else:  # call_function / call_method
            if fxops.node_kind(n, modules) == fxops.GETITEM and isinstance(n.args[0], torch.fx.Node) \
                    and not is_tensor_node(n.args[0]):
                src = resolve(n.args[0])
                if src is not None:
                    folded[n.name] = (src[0], shape)
                continue
            if not shapes:
                continue  # x.size(), x.shape, python ints: metadata, not dataflow
            nodes.append(ArchNode(n.name, _fn_name(n.target), "function", _fn_name(n.target), parent=scope,
                                  shape=shape, attrs=_op_args(n.args, dict(n.kwargs), _is_fx_node)))
        kept.add(n.name)
        connect(n.name, (n.args, dict(n.kwargs)))
        if fxops.is_inplace(n, modules) and n.args and isinstance(n.args[0], torch.fx.Node):
            mutated[n.args[0].name] = (n.name, shape)
    return nodes, edges


# ----------------------------------------------------------------------------- hooks fallback


class _HookRecorder(torch.overrides.TorchFunctionMode):
    """Records leaf-module calls (via hooks) and functional tensor ops (via this mode).

    A tensor's producer is looked up by object identity; every recorded tensor
    is kept alive for the duration of the pass so ``id()`` values stay unique.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.nodes: List[ArchNode] = []
        self.edges: List[ArchEdge] = []
        self.producer: Dict[int, Tuple[str, torch.Tensor]] = {}
        self.scope: List[str] = []          # call stack of container paths
        self.leaf_depth = 0                 # > 0 while inside a leaf module
        self.pending: List[str] = []        # node ids of leaf modules being run
        self.counts: Dict[str, int] = {}
        self.by_id: Dict[str, ArchNode] = {}

    def add(self, node: ArchNode) -> None:
        self.nodes.append(node)
        self.by_id[node.id] = node

    # -- ids and bookkeeping
    def new_id(self, base: str) -> str:
        base = "".join(c if c.isalnum() else "_" for c in base) or "op"
        k = self.counts.get(base, 0)
        self.counts[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    def produce(self, node_id: str, out: Any) -> None:
        for t in _leaves(out):
            if torch.is_tensor(t):
                self.producer[id(t)] = (node_id, t)

    def consume(self, node_id: str, args: Any) -> int:
        found = 0
        for t in _leaves(args):
            if torch.is_tensor(t) and id(t) in self.producer:
                self.edges.append(ArchEdge(self.producer[id(t)][0], node_id, tuple(t.shape)))
                found += 1
        return found

    @staticmethod
    def first_shape(out: Any) -> Shape:
        for t in _leaves(out):
            if torch.is_tensor(t):
                return tuple(int(s) for s in t.shape)
        return None

    # -- functional ops
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth == 0 and _contains(out, torch.is_tensor) \
                and any(torch.is_tensor(t) and id(t) in self.producer for t in _leaves((args, kwargs))):
            name = _fn_name(func)
            node_id = self.new_id(name)
            self.add(ArchNode(node_id, name, "function", name, parent=self.scope[-1] if self.scope else "",
                                       shape=self.first_shape(out),
                                       attrs=_op_args(tuple(args), kwargs, torch.is_tensor)))
            self.consume(node_id, (args, kwargs))
            self.produce(node_id, out)
        return out

    # -- module hooks
    def pre_hook(self, path: str, leaf: bool) -> Callable:
        def fn(module, args, kwargs):
            if self.leaf_depth:
                return None
            if not leaf:
                self.scope.append(path)
                return None
            node_id = self.new_id(path or type(module).__name__)
            self.add(ArchNode(node_id, path.rsplit(".", 1)[-1] or type(module).__name__, "module",
                                       type(module).__name__, path=path, parent=_parent_path(path),
                                       params=_module_params(module), attrs=_module_attrs(module)))
            self.consume(node_id, (args, kwargs))
            self.pending.append(node_id)
            self.leaf_depth += 1
            return None
        return fn

    def post_hook(self, leaf: bool) -> Callable:
        def fn(module, args, kwargs, out):
            if not leaf:
                if not self.leaf_depth and self.scope:
                    self.scope.pop()
                return None
            self.leaf_depth -= 1
            if self.leaf_depth == 0:
                node_id = self.pending.pop()
                self.by_id[node_id].shape = self.first_shape(out)
                self.produce(node_id, out)
            return None
        return fn


def _hookable(model: nn.Module) -> List[Tuple[str, nn.Module, bool]]:
    """(path, module, is_leaf) for the leaves and the containers above them."""
    out: List[Tuple[str, nn.Module, bool]] = []
    leaf_prefixes: List[str] = []
    for path, m in model.named_modules():
        if any(path.startswith(p + ".") for p in leaf_prefixes):
            continue  # inside a leaf: its internals are not drawn
        leaf = bool(path) and _is_leaf(m)
        if leaf:
            leaf_prefixes.append(path)
        out.append((path, m, leaf))
    return out


def _trace_hooks(model: nn.Module, inputs: Tuple) -> Tuple[List[ArchNode], List[ArchEdge]]:
    from reportgen.model.hooks import hooks

    rec = _HookRecorder(model)
    for i, x in enumerate(inputs):
        name = "x" if len(inputs) == 1 else f"x{i}"
        rec.add(ArchNode(name, name, "input", "input", shape=rec.first_shape(x)))
        rec.produce(name, x)
    with hooks() as hs:
        for path, m, leaf in _hookable(model):
            hs.append(m.register_forward_pre_hook(rec.pre_hook(path, leaf), with_kwargs=True))
            hs.append(m.register_forward_hook(rec.post_hook(leaf), with_kwargs=True))
        with rec:
            out = model(*inputs)
    rec.add(ArchNode("output", "output", "output", "output", shape=rec.first_shape(out)))
    rec.consume("output", out)
    return rec.nodes, rec.edges


# ----------------------------------------------------------------------------- post-processing


def _prune(nodes: List[ArchNode], edges: List[ArchEdge]) -> Tuple[List[ArchNode], List[ArchEdge]]:
    """Drop ops that never reach the output (control-flow probes, dead code); dedupe edges."""
    preds: Dict[str, List[str]] = {}
    for e in edges:
        preds.setdefault(e.dst, []).append(e.src)
    live: Set[str] = set()
    todo = [n.id for n in nodes if n.kind == "output"]
    while todo:
        nid = todo.pop()
        if nid not in live:
            live.add(nid)
            todo.extend(preds.get(nid, ()))
    if len(live) <= 1:  # nothing reaches the output: keep everything rather than nothing
        live = {n.id for n in nodes}
    live |= {n.id for n in nodes if n.kind == "input"}
    seen: Set[Tuple[str, str]] = set()
    kept_edges = []
    for e in edges:
        if e.src in live and e.dst in live and (e.src, e.dst) not in seen:
            seen.add((e.src, e.dst))
            kept_edges.append(e)
    return [n for n in nodes if n.id in live], kept_edges


def _blocks(model: nn.Module, nodes: List[ArchNode]) -> Dict[str, ArchBlock]:
    """Every module path that encloses at least one node, plus the model itself ("")."""
    modules = dict(model.named_modules())
    paths: Set[str] = {""}
    for n in nodes:
        p = n.parent
        while p:
            paths.add(p)
            p = _parent_path(p)
    blocks = {}
    for p in sorted(paths):
        m = modules.get(p)
        if m is None:  # a scope fx reported that named_modules() doesn't list
            continue
        blocks[p] = ArchBlock(p, type(m).__name__, _module_params(m))
    return blocks


def _finish(model: nn.Module, nodes: List[ArchNode], edges: List[ArchEdge], method: str, note: str) -> ArchGraph:
    nodes, edges = _prune(nodes, edges)
    blocks = _blocks(model, nodes)
    for n in nodes:  # a parent must be a known block, else attach to the nearest one that is
        while n.parent and n.parent not in blocks:
            n.parent = _parent_path(n.parent)
    return ArchGraph(nodes, edges, blocks, method, note)
