"""Exact receptive fields: which input pixels one unit of a layer can see.

Top-k patches, occlusion windows and "what does this channel look at" all need
the input region behind a unit, and the textbook formula only covers plain
chains. This module walks the model's real dataflow graph (``torch.fx``) so
residual adds, Inception branches and DenseNet concatenations are followed
exactly, and it refuses (``ValueError``) rather than guesses when it meets an
operation whose geometry it does not know.

Conventions (``receptive_field`` returns ``{"size", "jump", "start"}``, each a
``(h, w)`` pair):

* Pixel centres sit at integer coordinates ``0 .. H-1`` / ``0 .. W-1``.
* ``start`` is the centre of unit 0's window. A 3x3 conv with padding 1 gives
  ``start == 0.0`` (its window is pixels -1..1, one of them padding); an
  unpadded 3x3 conv gives ``1.0`` (pixels 0..2). Windows may reach outside the
  image where layers pad; ``receptive_field_box`` clips them.
* ``size`` is the extent (bounding box) of the window, holes of dilated or
  strided layers included. ``jump`` is the distance in input pixels between the
  windows of neighbouring units, so unit ``i`` is centred at
  ``start + i * jump``.
* Where paths meet (add, cat, ...) the window is the union of the paths'
  windows; the paths must agree on ``jump``. In ResNet, Inception and DenseNet
  the windows are aligned and centred alike, so the union is the largest one.
* Only the local path counts: statistics of normalisation layers and operands
  broadcast over the whole map (a squeeze-excitation scale, a global-pool
  context vector) are ignored, as in the usual receptive-field arithmetic.
  Otherwise every unit of such nets would "see" the whole image.
* An adaptive pool is exact when the output size divides the input size (an
  identity when equal, a k = stride = in/out pool otherwise); for other sizes
  every unit is reported to see the whole input (a safe over-estimate, with
  ``jump`` 0: all units then share one window).
* timm's TF-"same" convolutions and pools (``Conv2dSame``, ``MaxPool2dSame``,
  ...) pad by what the input size needs: ``ceil(n / stride)`` outputs, the
  smaller half of the pad first; the pad is computed from the traced size.
  A timm model is traced with timm's own fx leaves and autowrapped functions.
* A module called several times (torchvision's BasicBlock reuses ``relu``)
  is measured at its last call, as ``reportgen.model.hooks.ActivationRecorder``
  records it.

Models ``torch.fx`` cannot trace (data-dependent control flow) fall back to
forward hooks that follow the tensor from module to module; that only works
for chains of modules: a functional op between two modules stops it with a
``ValueError``, and in-place functional ops are invisible to it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import fx, nn

from reportgen.model import fxops
from reportgen.model.hooks import eval_mode, record_calls
from reportgen.model.layers import get_layer

Pair = Tuple[int, int]
Shape = Tuple[int, ...]

__all__ = ["receptive_field", "receptive_field_box"]

SUPPORTED = (
    "Conv2d, MaxPool2d, AvgPool2d, LPPool2d, AdaptiveAvg/MaxPool2d, padding layers, "
    "normalisation/activation/dropout layers, Identity, Flatten, Linear over channels, "
    "and the functional or tensor-method forms of these, plus elementwise arithmetic, "
    "cat/stack/chunk/split, reshapes that keep H and W last, permute/transpose and slicing")


@dataclass(frozen=True)
class Window:
    """Unit 0's window in input coordinates, per (h, w) axis.

    ``lo``/``hi`` are the first and last input pixel (inclusive) it covers;
    ``axes`` are the tensor dimensions that hold h and w, tracked so channel-last
    detours (permute, Linear, permute back) can be followed.
    """

    lo: Pair
    hi: Pair
    jump: Pair
    axes: Pair


class _NonSpatial:
    """Marker for a tensor that depends on the image but has no H/W axes any more."""

    def __repr__(self) -> str:
        return "NONSPATIAL"


NONSPATIAL = _NonSpatial()
State = Union[None, Window, _NonSpatial]   # None: does not depend on the image


class _Unsupported(Exception):
    """An operation whose geometry we do not know; becomes a ValueError naming the layer."""


# ---------------------------------------------------------------- public API

def receptive_field(model: nn.Module, layer: str, input_size: Sequence[int]) -> Dict[str, Tuple]:
    """Receptive field of one unit of ``layer`` for inputs of ``input_size`` (C, H, W).

    Returns ``{"size": (h, w), "jump": (h, w), "start": (h, w)}`` (ints, ints,
    floats); see the module docstring for the coordinate conventions. The model
    is run once for its feature-map sizes (adaptive pools and reshapes depend on
    them): on the meta device where it can be, so no arithmetic is done, else on
    zeros; in eval mode either way, every module's own mode restored after.
    """
    get_layer(model, layer)  # ValueError listing the valid names
    example = _example_input(model, input_size)
    with eval_mode(model):
        try:
            graph_module, outputs = _trace(model)
        except Exception as err:  # noqa: BLE001 - fx raises many types on untraceable code
            window = _chain_window(model, layer, example, err)
        else:
            window = _graph_window(graph_module, outputs, layer, example)
    return _as_dict(window)


def receptive_field_box(rf: Dict[str, Tuple], y: int, x: int,
                        input_hw: Sequence[int]) -> Tuple[int, int, int, int]:
    """Input box ``(y0, x0, y1, x1)`` seen by unit (y, x), clipped to the image.

    ``y1``/``x1`` are exclusive, so ``image[..., y0:y1, x0:x1]`` is the patch to
    crop for a top-k unit. A window lying wholly outside the image gives an empty
    box (``y0 == y1`` or ``x0 == x1``).
    """
    box = []
    for axis, unit in ((0, y), (1, x)):
        size, jump, start = rf["size"][axis], rf["jump"][axis], rf["start"][axis]
        first = int(round(start + unit * jump - (size - 1) / 2))  # exact: halves only
        limit = int(input_hw[axis])
        lo = min(max(first, 0), limit)
        box.append((lo, max(min(first + size, limit), lo)))
    (y0, y1), (x0, x1) = box
    return y0, x0, y1, x1


# ------------------------------------------------------------------- helpers

def _example_input(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    """A zero batch of one image on the model's device and dtype."""
    dims = tuple(int(d) for d in input_size)
    if len(dims) == 4:
        dims = dims[1:]
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"input_size must be (C, H, W), got {tuple(input_size)!r}")
    tensors = list(model.parameters()) + list(model.buffers())
    floats = [t for t in tensors if t.is_floating_point()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = floats[0].dtype if floats else torch.float32
    return torch.zeros((1,) + dims, device=device, dtype=dtype)


def _image_window(shape: Shape) -> Window:
    """Every input pixel sees itself: size 1, jump 1, centred on its own index."""
    n = len(shape)
    return Window(lo=(0, 0), hi=(0, 0), jump=(1, 1), axes=(n - 2, n - 1))


def _as_dict(w: Window) -> Dict[str, Tuple]:
    return {
        "size": tuple(int(h - l + 1) for l, h in zip(w.lo, w.hi)),
        "jump": tuple(int(j) for j in w.jump),
        "start": tuple(float((l + h) / 2) for l, h in zip(w.lo, w.hi)),
    }


def _pair(value: Any) -> Pair:
    if isinstance(value, fx.Node):
        raise _Unsupported("a kernel/stride/padding computed at run time")
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    return (int(value[0]), int(value[-1])) if len(value) in (1, 2) else _bad_pair(value)


def _bad_pair(value: Any) -> Pair:
    raise _Unsupported(f"a 2-d geometry argument, got {value!r}")


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


# ------------------------------------------------------------- geometry rules

def _slide(w: Window, kernel: Pair, stride: Pair, pad: Pair, dilation: Pair = (1, 1)) -> Window:
    """A sliding window: unit 0 covers input units -pad .. -pad + dilation*(kernel-1)."""
    lo = tuple(w.lo[i] - pad[i] * w.jump[i] for i in (0, 1))
    hi = tuple(w.hi[i] + (dilation[i] * (kernel[i] - 1) - pad[i]) * w.jump[i] for i in (0, 1))
    return replace(w, lo=lo, hi=hi, jump=tuple(w.jump[i] * stride[i] for i in (0, 1)))


def _require_last_axes(w: Window, shape: Shape, what: str) -> None:
    if w.axes != (len(shape) - 2, len(shape) - 1):
        raise _Unsupported(f"{what} on a tensor whose H, W are not its last two dims")


def _conv_padding(padding: Any, kernel: Pair, dilation: Pair) -> Pair:
    """Leading (top, left) padding; 'same' puts the odd extra pixel at the end, as PyTorch does."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return _pair(padding)


def _conv(w: Window, in_shape: Shape, kernel: Pair, stride: Any, padding: Any, dilation: Any) -> Window:
    _require_last_axes(w, in_shape, "a convolution")
    dilation = _pair(dilation)
    return _slide(w, kernel, _pair(stride), _conv_padding(padding, kernel, dilation), dilation)


def _pool(w: Window, in_shape: Shape, kernel: Any, stride: Any, padding: Any, dilation: Any = 1) -> Window:
    """Max/avg pools; ceil_mode only adds units at the end, unit 0 is unchanged."""
    _require_last_axes(w, in_shape, "a pooling")
    kernel = _pair(kernel)
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    return _slide(w, kernel, stride, _pair(padding), _pair(dilation))


def _adaptive(w: Window, in_shape: Shape, out_shape: Shape) -> Window:
    """Exact when out divides in; otherwise every unit is said to see the whole input."""
    _require_last_axes(w, in_shape, "an adaptive pooling")
    lo, hi, jump = list(w.lo), list(w.hi), list(w.jump)
    for i in (0, 1):
        n_in, n_out = in_shape[-2 + i], out_shape[-2 + i]
        if n_in % n_out == 0:
            k = n_in // n_out
            hi[i] += (k - 1) * jump[i]
            jump[i] *= k
        else:
            hi[i] += (n_in - 1) * jump[i]
            jump[i] = 0
    return replace(w, lo=tuple(lo), hi=tuple(hi), jump=tuple(jump))


def _pad(w: Window, in_shape: Shape, pad: Sequence[int]) -> Window:
    """Explicit padding (left, right, top, bottom): unit 0 moves back by left/top."""
    _require_last_axes(w, in_shape, "padding")
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) > 2 * len(in_shape):
        raise _Unsupported(f"padding {pad!r}")
    if len(pad) > 4 and any(pad[4:]):
        raise _Unsupported("padding of more than the last two dims")
    first = (pad[2] if len(pad) >= 4 else 0, pad[0])
    lo = tuple(w.lo[i] - first[i] * w.jump[i] for i in (0, 1))
    hi = tuple(w.hi[i] - first[i] * w.jump[i] for i in (0, 1))
    return replace(w, lo=lo, hi=hi)


def _reshaped(w: Window, in_shape: Shape, out_shape: Shape) -> State:
    """view/reshape/flatten/squeeze...: row-major order keeps the last two dims if their sizes stay."""
    last = (len(in_shape) - 2, len(in_shape) - 1)
    if len(out_shape) >= 2 and w.axes == last and tuple(out_shape[-2:]) == tuple(in_shape[-2:]):
        return replace(w, axes=(len(out_shape) - 2, len(out_shape) - 1))
    return NONSPATIAL


def _permuted(w: Window, dims: Sequence[int], ndim: int) -> Window:
    dims = [_norm_dim(int(d), ndim) for d in dims]
    return replace(w, axes=(dims.index(w.axes[0]), dims.index(w.axes[1])))


def _not_spatial_dim(w: Window, dim: Any, ndim: int, what: str) -> None:
    if dim is None:  # softmax's legacy implicit dim
        dim = 0 if ndim in (0, 1, 3) else 1
    if isinstance(dim, fx.Node) or _norm_dim(int(dim), ndim) in w.axes:
        raise _Unsupported(f"{what} along a spatial dimension")


def _indexed(w: Window, index: Any, in_shape: Shape) -> State:
    """x[...]: plain slices of H or W shift the window and scale the jump."""
    index = index if isinstance(index, tuple) else (index,)
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    fill = (slice(None),) * (len(in_shape) - consumed)
    if any(i is Ellipsis for i in index):
        at = next(k for k, i in enumerate(index) if i is Ellipsis)
        index = index[:at] + fill + index[at + 1:]
    else:
        index = index + fill
    lo, hi, jump, axes = list(w.lo), list(w.hi), list(w.jump), [None, None]
    src = dst = 0
    for item in index:
        if item is None:
            dst += 1
            continue
        spatial = w.axes.index(src) if src in w.axes else None
        if spatial is not None:
            if isinstance(item, int):
                return NONSPATIAL
            dynamic = isinstance(item, slice) and any(
                isinstance(v, fx.Node) for v in (item.start, item.stop, item.step))
            if not isinstance(item, slice) or dynamic:
                raise _Unsupported("indexing H or W with anything but a constant slice")
            start, _stop, step = item.indices(in_shape[src])
            if step < 1:
                raise _Unsupported("a reversed slice of H or W")
            lo[spatial] += start * jump[spatial]
            hi[spatial] += start * jump[spatial]
            jump[spatial] *= step
            axes[spatial] = dst
        elif not isinstance(item, (int, slice)):
            raise _Unsupported("advanced (tensor) indexing")
        src += 1
        dst += 0 if isinstance(item, int) else 1
    return Window(tuple(lo), tuple(hi), tuple(jump), tuple(axes))


def _union(operands: Sequence[Tuple[State, Shape]], out_shape: Shape, broadcast: bool) -> State:
    """Where paths meet, a unit sees the union of what each path sees.

    With ``broadcast``, operands are aligned from the right (elementwise ops)
    and those spread over the whole map (size 1 in H and W while the output is
    larger: an SE scale, a global context) are left out, as documented.
    """
    placed = []
    for state, shape in operands:
        offset = len(out_shape) - len(shape) if broadcast else 0
        if isinstance(state, Window):
            state = replace(state, axes=(state.axes[0] + offset, state.axes[1] + offset))
        placed.append((state, shape, offset))
    windows = [s for s, _, _ in placed if isinstance(s, Window)]
    axes = {w.axes for w in windows}
    if len(axes) != 1:
        raise _Unsupported("combining tensors whose H, W sit on different dims")
    (ah, aw), = axes

    def spread(shape: Shape, offset: int) -> bool:
        sizes = [shape[a - offset] if a - offset >= 0 else 1 for a in (ah, aw)]
        big = [out_shape[a] > 1 for a in (ah, aw)]
        return broadcast and any(big) and all(s == 1 for s, b in zip(sizes, big) if b)

    local = [(s, shape, off) for s, shape, off in placed if not spread(shape, off)]
    if any(s is NONSPATIAL for s, _, _ in local):
        raise _Unsupported("combining a spatial map with a non-spatial tensor of the same size")
    kept = [s for s, _, _ in local if isinstance(s, Window)] or windows
    jumps = {w.jump for w in kept}
    if len(jumps) != 1:
        raise _Unsupported(f"paths that meet with different jumps {sorted(jumps)}")
    return Window(lo=tuple(min(w.lo[i] for w in kept) for i in (0, 1)),
                  hi=tuple(max(w.hi[i] for w in kept) for i in (0, 1)),
                  jump=kept[0].jump, axes=(ah, aw))


# -------------------------------------------------------------- module rules

# kinds (reportgen.model.fxops) that leave a unit's window as it is; normalisation
# statistics are ignored, as the module docstring says
_KEEPS_WINDOW = (fxops.POINTWISE, fxops.NORM, fxops.STAT_NORM)

def _module_rule(m: nn.Module, w: Window, in_shape: Shape, out_shape: Shape) -> State:
    """The window after module ``m``; _Unsupported for modules of unknown geometry."""
    kind = fxops.module_kind(m)
    if fxops.tf_same(m) and kind in (fxops.CONV, fxops.POOL):
        return _tf_same(m, w, in_shape)
    if kind == fxops.CONV:
        return _conv(w, in_shape, m.kernel_size, m.stride, m.padding, m.dilation)
    if kind == fxops.POOL:
        if isinstance(m, nn.LPPool2d):
            return _pool(w, in_shape, m.kernel_size, m.stride, 0)
        dilation = m.dilation if isinstance(m, nn.MaxPool2d) else 1
        return _pool(w, in_shape, m.kernel_size, m.stride, m.padding, dilation)
    if kind == fxops.ADAPTIVE_POOL:
        return _adaptive(w, in_shape, out_shape)
    if kind == fxops.PAD:
        return _pad(w, in_shape, _pad_tuple(m.padding))
    if kind == fxops.SOFTMAX:
        _not_spatial_dim(w, m.dim, len(in_shape), type(m).__name__)
        return w
    if kind in _KEEPS_WINDOW:
        return w
    if kind == fxops.RESHAPE:
        return _reshaped(w, in_shape, out_shape)
    if kind == fxops.LINEAR:
        _not_spatial_dim(w, -1, len(in_shape), "Linear")
        return w
    raise _Unsupported(type(m).__name__)


def _tf_same(m: nn.Module, w: Window, in_shape: Shape) -> Window:
    """timm's TF-"same" conv/pool: the pad its forward adds comes from the input size."""
    _require_last_axes(w, in_shape, "a TF-'same' convolution or pooling")
    kernel = _pair(m.kernel_size)
    stride = kernel if getattr(m, "stride", None) in (None, (), []) else _pair(m.stride)
    dilation = _pair(getattr(m, "dilation", 1))
    pad = fxops.same_padding(in_shape[-2:], kernel, stride, dilation)
    return _slide(w, kernel, stride, pad, dilation)


def _pad_tuple(padding: Any) -> Tuple[int, ...]:
    return (padding,) * 4 if isinstance(padding, int) else tuple(padding)


# ------------------------------------------------------- graph (fx) engine

class _Tracer(fxops.Tracer):
    """Records the node each module call returns, so containers ('layer3') can be targets."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.outputs: Dict[str, fx.Node] = {}

    def call_module(self, m, forward, args, kwargs):  # noqa: D102 - fx hook
        out = super().call_module(m, forward, args, kwargs)
        first = out[0] if isinstance(out, (tuple, list)) and out else out  # as ActivationRecorder
        if isinstance(first, fx.Proxy):
            try:
                self.outputs[self.path_of_module(m)] = first.node  # last call wins
            except NameError:
                pass
        return out


def _trace(model: nn.Module) -> Tuple[fx.GraphModule, Dict[str, fx.Node]]:
    tracer = _Tracer(model)
    graph = tracer.trace(model)
    return fx.GraphModule(model, graph), tracer.outputs


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and keeps only the shape of every value."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: Dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n] = _shape_of(out)
        return out


class _MetaRun(nn.Module):
    """Lets ``torch.func.functional_call`` swap in meta weights for one shape-only run."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, x: torch.Tensor) -> Dict[fx.Node, Any]:
        recorder = _ShapeRecorder(self.gm)
        recorder.run(x)
        return recorder.shapes


def _record_shapes(gm: fx.GraphModule, example: torch.Tensor) -> Dict[fx.Node, Any]:
    """Shape of every graph value, from a run on the meta device (no arithmetic, so
    milliseconds even for a DenseNet at 224 px); models that build real tensors
    inside forward fail there and are run for real, on zeros."""
    runner = _MetaRun(gm)
    meta = {k: torch.empty_like(v, device="meta") for k, v in
            list(runner.named_parameters()) + list(runner.named_buffers())}
    with torch.no_grad():
        try:
            return torch.func.functional_call(runner, meta, (example.to("meta"),))
        except Exception:  # noqa: BLE001 - any op without a meta kernel, device mix-ups
            return _run_or_explain(runner, example)


def _run_or_explain(run: Callable, example: torch.Tensor) -> Any:
    """A model that cannot take ``input_size`` is bad input (ValueError), not our bug."""
    try:
        return run(example)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"the model does not run on inputs of shape {tuple(example.shape)}: "
                         f"{type(err).__name__}: {err}") from err


def _shape_of(value: Any) -> Any:
    """A tuple for a tensor, a list for a sequence holding tensors, else None."""
    if torch.is_tensor(value):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        inner = [_shape_of(v) for v in value]
        return inner if any(s is not None for s in inner) else None
    return None


def _ancestors(target: fx.Node) -> set:
    seen, todo = {target}, [target]
    while todo:
        for n in todo.pop().all_input_nodes:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def _graph_window(gm: fx.GraphModule, outputs: Dict[str, fx.Node], layer: str,
                  example: torch.Tensor) -> Window:
    """Propagate windows through the traced graph, in topological order, up to ``layer``."""
    if layer not in outputs:
        raise ValueError(f"layer {layer!r} is not called by the model's forward pass in eval mode")
    shapes, modules, target = _record_shapes(gm, example), dict(gm.named_modules()), outputs[layer]
    needed = _ancestors(target)
    states: Dict[fx.Node, State] = {}
    first_input = True
    for node in gm.graph.nodes:
        if node not in needed:
            continue
        if node.op == "placeholder":
            image = first_input and isinstance(shapes.get(node), tuple)
            states[node] = _image_window(shapes[node]) if image else None
            first_input = False
            continue
        try:
            states[node] = _node_state(node, states, shapes, modules)
        except _Unsupported as err:
            raise ValueError(
                f"cannot compute the receptive field of {layer!r}: it depends on {_describe(node)}, "
                f"which receptive_field does not support ({err}). Supported: {SUPPORTED}") from None
    return _final(states.get(target), shapes.get(target), layer)


def _final(state: State, shape: Any, layer: str) -> Window:
    if isinstance(state, Window):
        return state
    raise ValueError(f"the output of layer {layer!r} (shape {shape}) is not a spatial map "
                     "depending on the input, so it has no receptive field; pick a conv/pool layer")


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
    return f"{'method' if node.op == 'call_method' else 'function'} {name!r} (graph node {node.name})"


def _node_state(node: fx.Node, states: Dict[fx.Node, State], shapes: Dict[fx.Node, Any],
                modules: Dict[str, nn.Module]) -> State:
    if node.op in ("get_attr", "output") or shapes.get(node) is None:
        return None  # constants, sizes, shapes: no pixels flow through them
    inputs = [states.get(n) for n in node.all_input_nodes]
    if not any(isinstance(s, Window) for s in inputs):
        return NONSPATIAL if any(s is NONSPATIAL for s in inputs) else None
    if node.op == "call_module":
        return _module_node(node, modules[node.target], states, shapes)
    return _call_node(node, fxops.node_kind(node, modules), states, shapes)


def _module_node(node: fx.Node, m: nn.Module, states, shapes) -> State:
    src = node.args[0] if node.args else None
    w = states.get(src) if isinstance(src, fx.Node) else None
    others = [n for n in node.all_input_nodes if n is not src and isinstance(states.get(n), Window)]
    if not isinstance(w, Window) or others:
        raise _Unsupported(f"{type(m).__name__} fed through an argument other than its first")
    return _module_rule(m, w, shapes[src], shapes[node])


_SIGNATURES = {  # positional parameter names of the functional forms we read arguments from
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "avg_pool2d": ("input", "kernel_size", "stride", "padding", "ceil_mode"),
    "pad": ("input", "pad", "mode", "value"),
    "cat": ("tensors", "dim"),
    "stack": ("tensors", "dim"),
    "split": ("input", "size", "dim"),
    "permute": ("input", "dims"),
    "transpose": ("input", "dim0", "dim1"),
    "softmax": ("input", "dim"),
}
_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "dim": 0}


def _bind(node: fx.Node, kind: str) -> Dict[str, Any]:
    args = dict(zip(_SIGNATURES[kind], node.args))
    args.update(node.kwargs)
    return args


def _arg(args: Dict[str, Any], name: str) -> Any:
    return args.get(name, _DEFAULTS.get(name))


def _call_node(node: fx.Node, kind: str, states, shapes) -> State:
    """Functions and tensor methods: dispatch on what the op (of ``kind``) does to H and W."""
    target, is_method = node.target, node.op == "call_method"
    out_shape = shapes[node]
    src = node.args[0] if node.args else None
    w = states.get(src) if isinstance(src, fx.Node) else None
    in_shape = shapes.get(src) if isinstance(src, fx.Node) else None

    def tensor_operands(values):
        return [(states.get(n), shapes[n]) for n in values
                if isinstance(n, fx.Node) and isinstance(shapes.get(n), tuple)
                and states.get(n) is not None]

    if kind in _KEEPS_WINDOW or kind == fxops.ARITH:
        return _union(tensor_operands(node.all_input_nodes), out_shape, broadcast=True)
    if kind == fxops.CONCAT:
        return _concat(node, states, shapes, stack=target is torch.stack)
    if kind == fxops.GETITEM:
        if isinstance(in_shape, list):  # an element of a tuple/list result keeps its window
            return w
        if not isinstance(w, Window):
            raise _Unsupported("indexing with a tensor that depends on the image")
        return _indexed(w, node.args[1], in_shape)
    if not isinstance(w, Window):
        raise _Unsupported("an op whose first argument is not the image-dependent map")
    if kind == fxops.RESHAPE:
        return _reshaped(w, in_shape, out_shape) if isinstance(out_shape, tuple) else NONSPATIAL
    if kind == fxops.PERMUTE and target in ("permute", torch.permute):
        dims = node.args[1:] if is_method else _bind(node, "permute")["dims"]
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return _permuted(w, dims, len(in_shape))
    if kind == fxops.PERMUTE:   # transpose
        a = _bind(node, "transpose")
        dims = list(range(len(in_shape)))
        d0, d1 = _norm_dim(a["dim0"], len(dims)), _norm_dim(a["dim1"], len(dims))
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return _permuted(w, dims, len(dims))
    if kind == fxops.SOFTMAX:
        _not_spatial_dim(w, _bind(node, "softmax").get("dim", -3), len(in_shape), "softmax")
        return w
    if kind == fxops.SPLIT:
        _not_spatial_dim(w, _arg(_bind(node, "split"), "dim"), len(in_shape), "chunk/split")
        return w
    if is_method:
        raise _Unsupported(f"tensor method {target!r}")
    return _functional_geometry(node, kind, w, in_shape, out_shape, shapes)


def _concat(node: fx.Node, states, shapes, stack: bool) -> State:
    a = _bind(node, "cat")
    tensors, out_shape = list(a["tensors"]), shapes[node]
    dim = _norm_dim(int(_arg(a, "dim")), len(out_shape))
    operands = []
    for n in tensors:
        s = states.get(n)
        if isinstance(s, Window):
            if not stack and dim in s.axes:
                raise _Unsupported("cat along a spatial dimension")
            if stack:
                s = replace(s, axes=tuple(x + (x >= dim) for x in s.axes))
        if s is not None:
            operands.append((s, out_shape))
    return _union(operands, out_shape, broadcast=False)


def _functional_geometry(node: fx.Node, kind: str, w: Window, in_shape: Shape, out_shape: Any,
                         shapes) -> State:
    """F.conv2d / F.max_pool2d / F.avg_pool2d / F.adaptive_*_pool2d / F.pad."""
    target = node.target
    if kind == fxops.CONV:
        a = _bind(node, "conv2d")
        kernel = tuple(shapes[a["weight"]][-2:])
        return _conv(w, in_shape, kernel, _arg(a, "stride") or 1, _arg(a, "padding"), _arg(a, "dilation"))
    if kind == fxops.POOL and target is not F.avg_pool2d:
        a = _bind(node, "max_pool2d")
        return _pool(w, in_shape, a["kernel_size"], _arg(a, "stride"), _arg(a, "padding"),
                     _arg(a, "dilation"))
    if kind == fxops.POOL:
        a = _bind(node, "avg_pool2d")
        return _pool(w, in_shape, a["kernel_size"], _arg(a, "stride"), _arg(a, "padding"))
    if kind == fxops.ADAPTIVE_POOL:
        first_out = out_shape[0] if isinstance(out_shape, list) else out_shape
        return _adaptive(w, in_shape, first_out)
    if kind == fxops.PAD:
        return _pad(w, in_shape, _bind(node, "pad")["pad"])
    raise _Unsupported(f"function {getattr(target, '__name__', target)!r}")


# ------------------------------------------------------ chain (hooks) engine

def _chain_window(model: nn.Module, layer: str, example: torch.Tensor, trace_error: Exception) -> Window:
    """Fallback for untraceable models: follow the tensor from leaf module to leaf module.

    Each leaf's input must be the exact tensor object an earlier leaf returned
    (or the image); anything else means a functional op we cannot see, and the
    window is marked lost rather than guessed.
    """
    target = get_layer(model, layer)
    calls = _run_or_explain(lambda x: record_calls(model, x, keep_tensors=True).calls, example)
    known: Dict[int, Tuple[torch.Tensor, Any]] = {id(example): (example, _image_window(example.shape))}
    found: Dict[str, Any] = {}

    def state_of(t: Any) -> Any:
        hit = known.get(id(t)) if torch.is_tensor(t) else None
        return hit[1] if hit is not None and hit[0] is t else None

    for call in calls:   # in the order they finished, as the hooks saw them
        out = call.output[0] if isinstance(call.output, (tuple, list)) else call.output
        if call.name and call.leaf and call.inputs and torch.is_tensor(out):
            state = state_of(call.inputs[0])
            if state is None:
                state = f"the input of module {call.name!r}, which no earlier module returned"
            elif isinstance(state, Window):
                try:
                    state = _module_rule(call.module, state, tuple(call.inputs[0].shape), tuple(out.shape))
                except _Unsupported as err:
                    state = f"module {call.name!r} ({err})"
            known[id(out)] = (out, state)
        if call.module is target:
            found["state"], found["shape"] = state_of(out), tuple(getattr(out, "shape", ()))
    state = found.get("state")
    if isinstance(state, Window) or state is NONSPATIAL:
        return _final(state, found.get("shape"), layer)
    why = state or "the layer was not called"
    raise ValueError(
        f"cannot compute the receptive field of {layer!r}: torch.fx could not trace the model "
        f"({type(trace_error).__name__}: {trace_error}) and following modules one by one lost track "
        f"at {why}. Supported: {SUPPORTED}")
