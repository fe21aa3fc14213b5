"""Incremental occlusion inference (Krypton: Nakandala, Kumar & Papakonstantinou, SIGMOD 2019).

An occluder patch changes only a rectangle of the input. Through a conv or pool
that rectangle grows by the kernel's reach and shrinks by its stride, so each
layer's output differs from the unoccluded image's output only inside a
rectangle we can compute in advance. We run the clean image once, keep every
layer's output, and for each patch recompute just those rectangles: the input
region a rectangle needs is cut from the cached (padded) clean activation with
the previous layer's new rectangle pasted over it, so the result is exactly
what a full forward pass would give (up to float summation order).

The model is traced with torch.fx, so the engine sees the real data flow
(residual adds included) instead of guessing it from module order. Nodes are
classified once per input size into a *plan*, from their kind in
``reportgen.model.fxops``:

* ``geom``: Conv2d / MaxPool2d / AvgPool2d with zero padding semantics we can
  reproduce (rectangles grow);
* ``point``: per-pixel ops of one map (``pointwise`` and ``norm`` kinds:
  activations, BatchNorm and dropout in eval, casts);
* ``binary``: elementwise arithmetic (``arith``) on maps of one shape, or on one
  map and scalars (ResNet's residual add): the union of the rectangles;
* ``dense``: anything else (global pooling, flatten, linear, ops we do not
  know), and any geom op whose rectangle would cover more than
  ``DENSE_FRACTION`` of its map -- Krypton's projective-field threshold: past
  it, cutting and pasting costs more than it saves. Once dense, a value is a
  plain (B, ...) batch and the rest of the graph runs as usual.

All rectangles of one node share one size (the largest over all occluder
positions, clamped inside the map) so a batch of patches is one tensor and
one conv call; recomputing a few unchanged border pixels is harmless.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from reportgen.engine.memory import nbytes, on_meta, peak_estimate
from reportgen.model import fxops

# Geom ops whose uniform rectangle covers at least this fraction of their
# output map are computed densely. Krypton uses a similar threshold (tau):
# near a full map, cutting and pasting the halo costs more than the few rows
# it saves. For ResNet-18 (224, window 32/16) 0.6 plans 0.517 of the full
# multiply-adds against 0.492 at 0.7 and 0.483 with no threshold; it was not
# tuned on wall time (the shared benchmark machine was too noisy to separate them).
DENSE_FRACTION = 0.6

# node kinds (reportgen.model.fxops) whose output pixel depends only on the same
# input pixel: a changed rectangle stays that rectangle
_PER_PIXEL = (fxops.POINTWISE, fxops.NORM)
_TRAINING_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.RReLU, nn.modules.batchnorm._BatchNorm)


class IncrementalUnsupported(ValueError):
    """The model cannot be traced or has nothing incremental inference can use."""


# ---------------------------------------------------------------- values

@dataclass
class Same:
    """A value identical for every sample: the clean image's activation (batch 1)."""
    full: Any


@dataclass
class Patched:
    """Clean activation ``full`` (1, C, H, W) with, per sample, a ``rect`` pasted at ``off``."""
    full: torch.Tensor
    rect: torch.Tensor          # (B, C, rh, rw)
    off: np.ndarray             # (B, 2) top-left corner of each sample's rectangle


# ---------------------------------------------------------------- plan

@dataclass
class NodePlan:
    """How one node runs for every occluder position (arrays indexed by position)."""
    kind: str                                   # same | input | geom | point | binary | dense
    lo: Optional[np.ndarray] = None             # (P, 2) first changed row/col (true, inclusive)
    hi: Optional[np.ndarray] = None             # (P, 2) last changed row/col
    size: Optional[Tuple[int, int]] = None      # uniform stored rectangle size
    off: Optional[np.ndarray] = None            # (P, 2) stored rectangle corner
    geom: Optional[Dict[str, Any]] = None       # kernel/stride/padding/dilation/fill for geom
    shape: Optional[Tuple[int, ...]] = None     # clean output shape (batch 1)


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _geom_params(mod: nn.Module) -> Optional[Dict[str, Any]]:
    """Kernel, stride, padding, dilation and pad fill of a windowed op we can cut up, else None."""
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str) and mod.padding != "valid":
            return None
        pad = (0, 0) if isinstance(mod.padding, str) else _pair(mod.padding)
        return dict(k=_pair(mod.kernel_size), s=_pair(mod.stride), p=pad, d=_pair(mod.dilation), fill=0.0)
    if isinstance(mod, nn.MaxPool2d):
        if mod.ceil_mode or mod.return_indices:
            return None
        return dict(k=_pair(mod.kernel_size), s=_pair(mod.stride or mod.kernel_size),
                    p=_pair(mod.padding), d=_pair(mod.dilation), fill=float("-inf"))
    if isinstance(mod, nn.AvgPool2d):
        if mod.ceil_mode or not mod.count_include_pad or mod.divisor_override is not None:
            return None
        return dict(k=_pair(mod.kernel_size), s=_pair(mod.stride or mod.kernel_size),
                    p=_pair(mod.padding), d=(1, 1), fill=0.0)
    return None


def _per_pixel_as_set(mod: nn.Module) -> bool:
    """Whether a module of a per-pixel kind is per pixel in its current mode: a batch norm
    without running statistics, and dropout, RReLU or batch norm in training, are not."""
    if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is None:
        return False
    return not (mod.training and isinstance(mod, _TRAINING_DEPENDENT))


def _uniform(lo: np.ndarray, hi: np.ndarray, extent: Sequence[int]) -> Tuple[Tuple[int, int], np.ndarray]:
    """One rectangle size for all positions, and corners that keep it inside the map."""
    ext = np.asarray(extent)
    size = np.minimum((hi - lo + 1).max(axis=0), ext)
    off = np.clip(lo, 0, ext - size)
    return (int(size[0]), int(size[1])), off


def _geom_out(lo, hi, g, out_hw) -> Tuple[np.ndarray, np.ndarray]:
    """Output rows/cols touched by changed input rows/cols [lo, hi] (inclusive)."""
    k, s, p, d = (np.asarray(g[n]) for n in ("k", "s", "p", "d"))
    reach = (k - 1) * d
    olo = -((-(lo + p - reach)) // s)           # ceil division
    ohi = (hi + p) // s
    ext = np.asarray(out_hw) - 1
    olo = np.clip(olo, 0, ext)
    ohi = np.clip(np.maximum(ohi, olo), 0, ext)
    return olo, ohi


def _functionalize(gm: fx.GraphModule) -> None:
    """Make later readers of an in-place-modified tensor read the in-place op's node.

    ``x.relu_(); return pool(x)`` traces as pool reading the *pre*-relu node;
    run normally that works by mutation, but we cache and cut per-node values,
    so every node must name the value it really reads.
    """
    modules = dict(gm.named_modules())
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if not fxops.is_inplace(node, modules) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        for user in list(src.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(src, node)
    gm.recompile()


def trace(model: nn.Module, fuse_bn: bool = True) -> fx.GraphModule:
    """An fx GraphModule of ``model`` (in eval mode), conv+BN folded when possible.

    Folding BatchNorm into the preceding conv is exact up to float rounding and
    saves a memory-bound pass per conv, in both the rectangle and dense parts.
    The model's own modules are not modified (fusion works on a deep copy).
    """
    try:
        if fuse_bn:
            from torch.fx.experimental.optimization import fuse
            try:
                gm = fuse(model)
            except Exception:
                gm = fx.symbolic_trace(model)
        else:
            gm = fx.symbolic_trace(model)
    except Exception as e:  # data-dependent control flow, unsupported ops ...
        raise IncrementalUnsupported(f"incremental occlusion needs a torch.fx-traceable model: {e}") from e
    _functionalize(gm)
    return gm


class IncrementalEngine:
    """Runs one traced model on many occluded copies of one image, recomputing only what changes."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes: List[fx.Node] = list(gm.graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise IncrementalUnsupported("incremental occlusion needs a model with exactly one input")
        self.input_node = placeholders[0]
        self.plan: Dict[fx.Node, NodePlan] = {}
        self.cache: Dict[fx.Node, Any] = {}
        self.output: Any = None
        self._padded: Dict[Tuple[fx.Node, Tuple[int, int], float], torch.Tensor] = {}
        # gather indices depend on the plan and the positions only: reused for every image
        self._index_cache: Dict[Any, torch.Tensor] = {}

    # ---- the clean pass
    def clean_pass(self, x1: torch.Tensor) -> Any:
        """Run the clean image (batch 1), caching every node's value; returns the model output."""
        env: Dict[fx.Node, Any] = {}
        self.cache.clear()
        self._padded.clear()
        for node in self.nodes:
            if node.op == "placeholder":
                val = x1
            elif node.op == "output":
                self.output = fx.node.map_arg(node.args[0], lambda n: env[n])
                return self.output
            else:
                val = self._run_node(node, env)
            env[node] = val
            # clone: a later in-place op would otherwise change what we cached
            self.cache[node] = val.clone() if torch.is_tensor(val) else val
        raise RuntimeError("graph has no output node")

    def shape_pass(self, x1: torch.Tensor) -> Any:
        """:meth:`clean_pass` on the meta device: every value's shape, enough to plan
        (:meth:`build_plan`, :meth:`cost_fraction`, :meth:`peak_bytes`) at no forward
        pass's cost. Where the meta run fails (an op without a meta kernel, a tensor
        built on a real device inside the model) the clean pass runs for real."""
        try:
            return on_meta(self.gm, self.clean_pass, x1)
        except Exception:  # noqa: BLE001 - any op the meta device cannot run
            return self.clean_pass(x1)

    def _run_node(self, node: fx.Node, env: Dict[fx.Node, Any]) -> Any:
        """One node of the clean pass: an attribute read from the module (later runs read it from
        the cache this pass fills), or a call, as every run makes it (:meth:`_call`)."""
        if node.op == "get_attr":
            obj = self.gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        return self._call(node, args, kwargs)

    def peak_bytes(self) -> int:
        """Peak activation bytes of one sample's plain forward, from the clean pass's cache."""
        steps = [(sum(nbytes(self.cache.get(a)) for a in node.all_input_nodes), nbytes(self.cache[node]))
                 for node in self.nodes if node.op not in ("placeholder", "output", "get_attr")]
        return peak_estimate(steps, nbytes(self.cache[self.input_node]))

    # ---- planning
    def _classify(self, node: fx.Node, dep: Dict[fx.Node, bool]) -> str:
        ins = [a for a in node.all_input_nodes]
        if node.op == "placeholder":
            return "input"
        if node.op == "output":
            return "output"
        if not any(dep[a] for a in ins):
            return "same"
        tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
        spatial = [a for a in tensor_args if len(self.plan[a].shape or ()) == 4
                   and self.plan[a].kind in ("input", "geom", "point", "binary")]
        kind = fxops.node_kind(node, self.modules)
        if node.op == "call_module":
            mod = self.modules[node.target]
            if len(node.args) == 1 and spatial:
                if _geom_params(mod) is not None:
                    return "geom"
                if kind in _PER_PIXEL and _per_pixel_as_set(mod):
                    return "point"
        elif kind in _PER_PIXEL and spatial and len(tensor_args) == 1 and node.args[0] is tensor_args[0] \
                and not node.kwargs.get("training", False):
            return "point"
        elif kind == fxops.ARITH and self._binary_ok(node, tensor_args):
            return "binary"
        return "dense"

    def _binary_ok(self, node: fx.Node, tensor_args: List[fx.Node]) -> bool:
        """Elementwise op on maps of one shape (no broadcasting), any scalar extras."""
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("out") is not None:
            return False
        plans = [self.plan[a] for a in tensor_args]
        if not plans or any(p.kind not in ("input", "geom", "point", "binary", "same") for p in plans):
            return False
        shapes = {p.shape for p in plans}
        if len(shapes) != 1 or len(next(iter(shapes)) or ()) != 4:
            return False
        return any(p.kind != "same" for p in plans) and len(node.args) == 2

    def build_plan(self, window: Tuple[int, int], starts: np.ndarray) -> None:
        """Plan every node for occluders of size ``window`` at ``starts`` (P, 2) (after clean_pass)."""
        self.plan.clear()
        self._index_cache.clear()
        dep: Dict[fx.Node, bool] = {}
        for node in self.nodes:
            shape = tuple(self.cache[node].shape) if node in self.cache and torch.is_tensor(self.cache[node]) else None
            kind = self._classify(node, dep) if node.op != "placeholder" else "input"
            dep[node] = kind != "same"
            plan = NodePlan(kind=kind, shape=shape)
            if kind == "input":
                hw = np.asarray(shape[2:])
                plan.lo = starts.copy()
                plan.hi = np.minimum(starts + np.asarray(window), hw) - 1
                plan.size, plan.off = _uniform(plan.lo, plan.hi, hw)
            elif kind == "point":
                src = self.plan[node.args[0]]
                plan.lo, plan.hi, plan.size, plan.off = src.lo, src.hi, src.size, src.off
            elif kind == "geom":
                src = self.plan[node.args[0]]
                g = _geom_params(self.modules[node.target])
                plan.lo, plan.hi = _geom_out(src.lo, src.hi, g, shape[2:])
                plan.size, plan.off = _uniform(plan.lo, plan.hi, shape[2:])
                plan.geom = g
                if plan.size[0] * plan.size[1] >= DENSE_FRACTION * shape[2] * shape[3]:
                    plan.kind = "dense"
            elif kind == "binary":
                srcs = [self.plan[a] for a in node.args if isinstance(a, fx.Node) and self.plan[a].kind != "same"]
                plan.lo = np.minimum.reduce([s.lo for s in srcs])
                plan.hi = np.maximum.reduce([s.hi for s in srcs])
                plan.size, plan.off = _uniform(plan.lo, plan.hi, shape[2:])
            self.plan[node] = plan

    def cost_fraction(self) -> float:
        """Estimated multiply-adds of one incremental pass over those of a full pass (convs+linears)."""
        inc = full = 0.0
        for node, plan in self.plan.items():
            if node.op != "call_module":
                continue
            mod = self.modules[node.target]
            if isinstance(mod, nn.Conv2d) and plan.shape is not None:
                per_px = mod.in_channels // mod.groups * mod.out_channels * int(np.prod(mod.kernel_size))
                area = plan.shape[2] * plan.shape[3]
                full += per_px * area
                inc += per_px * (area if plan.kind == "dense" else plan.size[0] * plan.size[1])
            elif isinstance(mod, nn.Linear):
                full += mod.in_features * mod.out_features
                inc += mod.in_features * mod.out_features
        return inc / full if full else 1.0

    # ---- occluded passes
    def run(self, rect: torch.Tensor, idx: np.ndarray) -> Any:
        """Model output for the occluded images whose input rectangles are ``rect``.

        ``rect`` (B, C, h, w) holds the input pixels of each occluded image at
        the input plan's stored corners for positions ``idx``.
        """
        env: Dict[fx.Node, Any] = {}
        users_left = {n: len(n.users) for n in self.nodes}
        for node in self.nodes:
            plan = self.plan[node]
            if node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: self._dense(env[n], idx, n))
            if plan.kind == "input":
                val = Patched(self.cache[node], rect, plan.off[idx])
            elif plan.kind == "same":
                val = Same(self.cache[node])
            elif plan.kind == "point":
                src = env[node.args[0]]
                r = src.rect.clone() if len(node.args[0].users) > 1 else src.rect
                val = Patched(self.cache[node], self._apply(node, r, env), plan.off[idx])
            elif plan.kind == "geom":
                src_node = node.args[0]
                g = plan.geom
                region = self._gather(src_node, env[src_node], plan.off[idx] * np.asarray(g["s"]),
                                      self._region_size(plan.size, g), g["p"], g["fill"],
                                      key=("geom", node, int(idx[0]), len(idx)))
                out = self._apply_geom(node, region)
                val = Patched(self.cache[node], out, plan.off[idx])
            elif plan.kind == "binary":
                val = self._binary(node, plan, env, idx)
            else:
                args = fx.node.map_arg(node.args, lambda n: self._dense(env[n], idx, n))
                kwargs = fx.node.map_arg(node.kwargs, lambda n: self._dense(env[n], idx, n))
                val = self._call(node, args, kwargs)
            env[node] = val
            for a in node.all_input_nodes:     # free early: keeps the batch's memory near a plain forward's
                users_left[a] -= 1
                if users_left[a] == 0:
                    env.pop(a, None)
        raise RuntimeError("graph has no output node")

    @staticmethod
    def _region_size(size: Tuple[int, int], g: Dict[str, Any]) -> Tuple[int, int]:
        return tuple((size[i] - 1) * g["s"][i] + (g["k"][i] - 1) * g["d"][i] + 1 for i in range(2))

    def _call(self, node: fx.Node, args, kwargs) -> Any:
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return self.cache[node]
        raise RuntimeError(f"unexpected fx node {node.op}")

    def _apply(self, node: fx.Node, r: torch.Tensor, env) -> torch.Tensor:
        args = (r,) + tuple(fx.node.map_arg(node.args[1:], lambda n: self._dense(env[n], None)))
        return self._call(node, args, node.kwargs)

    def _apply_geom(self, node: fx.Node, region: torch.Tensor) -> torch.Tensor:
        """The module's op on a pre-padded region: same weights, padding 0."""
        mod = self.modules[node.target]
        if isinstance(mod, nn.Conv2d):
            return F.conv2d(region, mod.weight, mod.bias, mod.stride, 0, mod.dilation, mod.groups)
        if isinstance(mod, nn.MaxPool2d):
            return F.max_pool2d(region, mod.kernel_size, mod.stride or mod.kernel_size, 0, mod.dilation)
        return F.avg_pool2d(region, mod.kernel_size, mod.stride or mod.kernel_size, 0)

    def _clean_flat(self, node: fx.Node, pad: Tuple[int, int], fill: float) -> torch.Tensor:
        """The clean activation, padded, as (Hp * Wp, C) rows: one row per pixel (channels last)."""
        key = (node, pad, fill)
        if key not in self._padded:
            full = self.cache[node]
            if any(pad):
                full = F.pad(full, (pad[1], pad[1], pad[0], pad[0]), value=fill)
            self._padded[key] = full[0].permute(1, 2, 0).reshape(-1, full.shape[1]).contiguous()
        return self._padded[key]

    def _gather(self, src_node: fx.Node, src: Any, corner: np.ndarray, size: Tuple[int, int],
                pad: Tuple[int, int], fill: float, key: Any = None) -> torch.Tensor:
        """Per sample, the ``size`` region at ``corner`` (padded coords) of the occluded activation.

        One ``index_select`` over the rows of [clean pixels; this batch's rect
        pixels] does the cut and the paste at once: each output pixel reads its
        sample's rect where the rect covers it and the clean map elsewhere. The
        result is a channels-last (B, C, h, w) tensor, which oneDNN convs take as is.
        """
        clean = self._clean_flat(src_node, pad, fill)
        c = clean.shape[1]
        rect = src.rect if isinstance(src, Patched) else None
        idx = self._index_cache.get(key) if key is not None else None
        if idx is None:
            hp = self.cache[src_node].shape[2] + 2 * pad[0]
            wp = self.cache[src_node].shape[3] + 2 * pad[1]
            idx = _region_index(corner, size, (hp, wp), pad,
                                None if rect is None else (src.off, tuple(rect.shape[2:])))
            idx = torch.as_tensor(idx.reshape(-1), device=clean.device)
            if key is not None:
                self._index_cache[key] = idx
        if rect is None:
            table = clean
        else:
            table = torch.cat([clean, rect.permute(0, 2, 3, 1).reshape(-1, c)])
        out = table.index_select(0, idx)
        return out.view(len(corner), size[0], size[1], c).permute(0, 3, 1, 2)

    def _binary(self, node: fx.Node, plan: NodePlan, env, idx: np.ndarray) -> Any:
        off = plan.off[idx]
        vals = []
        for i, a in enumerate(node.args):
            if not isinstance(a, fx.Node):
                vals.append(a)
                continue
            v = env[a]
            if isinstance(v, Patched) and v.rect.shape[2:] == plan.size and np.array_equal(v.off, off):
                vals.append(v.rect)
            else:
                vals.append(self._gather(a, v, off, plan.size, (0, 0), 0.0,
                                         key=("binary", node, i, int(idx[0]), len(idx))))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self._dense(env[n], idx, n))
        return Patched(self.cache[node], self._call(node, tuple(vals), kwargs), off)

    def _dense(self, v: Any, idx: Optional[np.ndarray], node: Optional[fx.Node] = None) -> Any:
        """A plain batched tensor: the clean activation with each sample's rect pasted in."""
        if isinstance(v, Same):
            return v.full
        if isinstance(v, Patched):
            hw = tuple(v.full.shape[2:])
            corner = np.zeros((v.rect.shape[0], 2), dtype=np.int64)
            key = None if node is None or idx is None else ("dense", node, int(idx[0]), len(idx))
            return self._gather(node, v, corner, hw, (0, 0), 0.0, key).contiguous()
        return v


def _region_index(corner: np.ndarray, size: Tuple[int, int], padded_hw: Tuple[int, int],
                  pad: Tuple[int, int], rect: Optional[Tuple[np.ndarray, Tuple[int, int]]]) -> np.ndarray:
    """Row numbers into [clean (Hp*Wp rows); rects (B*rh*rw rows)] for each region pixel."""
    B = len(corner)
    py = corner[:, 0, None] + np.arange(size[0])[None]            # (B, h) padded row
    px = corner[:, 1, None] + np.arange(size[1])[None]            # (B, w)
    idx = py[:, :, None] * padded_hw[1] + px[:, None, :]
    if rect is not None:
        off, (rh, rw) = rect
        ry = py - pad[0] - off[:, 0, None]
        rx = px - pad[1] - off[:, 1, None]
        inside = ((ry >= 0) & (ry < rh))[:, :, None] & ((rx >= 0) & (rx < rw))[:, None, :]
        ridx = (padded_hw[0] * padded_hw[1] + np.arange(B)[:, None, None] * (rh * rw)
                + ry[:, :, None] * rw + rx[:, None, :])
        idx = np.where(inside, ridx, idx)
    return idx.astype(np.int64)
