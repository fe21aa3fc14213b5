"""How far NEW's weights are from BASE's, layer by layer (same architecture only).

* ``same_architecture``: the same module names and the same parameter names
  and shapes (buffers such as BatchNorm's running statistics are not
  compared: they are not weights).
* Per-layer relative change ``||W_new - W_base|| / ||W_base||``, where W is
  *all of the module's own floating-point parameters* (weight and bias, and
  any other, not its children's) concatenated into one vector: the L2 norm
  over the concatenation is the root of the summed squares of the tensors'
  norms, so a layer's weight and bias count by their size, as in the
  evolution section's per-layer drift. A layer whose BASE norm is below
  ``evolution.EPS`` (an all-zero layer) is measured against 1, as there.
  Norms are float64.
* First-layer filters of both models and their difference, for a
  BASE | NEW | difference figure (``evolution.filter_view``: RGB taps kept,
  other inputs averaged, at most ``max_filters``).

Relative change is not a similarity: the same network with its channels
permuted computes the same function and has a large weight change (CKA, in
``cka.py``, sees through that).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from reportgen.analyses.evolution import filter_view, relative
from reportgen.model.layers import first_conv, get_layer


def _own_params(model: nn.Module) -> Dict[str, List[Tuple[str, torch.Tensor]]]:
    """Module name -> its own floating-point parameters (name, tensor), in model order."""
    out: Dict[str, List[Tuple[str, torch.Tensor]]] = {}
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.is_floating_point()]
        if own:
            out[name] = own
    return out


def architecture_mismatch(base: nn.Module, new: nn.Module, limit: int = 5) -> List[str]:
    """Why two models do not share an architecture (empty when they do), at most ``limit`` reasons."""
    reasons: List[str] = []
    mods_b = [n for n, _ in base.named_modules()]
    mods_n = [n for n, _ in new.named_modules()]
    only_b = [n for n in mods_b if n not in set(mods_n)]
    only_n = [n for n in mods_n if n not in set(mods_b)]
    if only_b:
        reasons.append(f"modules only in BASE: {', '.join(only_b[:limit])}")
    if only_n:
        reasons.append(f"modules only in NEW: {', '.join(only_n[:limit])}")
    shapes_b = {n: tuple(p.shape) for n, p in base.named_parameters()}
    shapes_n = {n: tuple(p.shape) for n, p in new.named_parameters()}
    for name in [n for n in shapes_b if n not in shapes_n] + [n for n in shapes_n if n not in shapes_b]:
        reasons.append(f"parameter {name!r} only in {'BASE' if name in shapes_b else 'NEW'}")
    for name in (n for n in shapes_b if n in shapes_n and shapes_b[n] != shapes_n[n]):
        reasons.append(f"parameter {name!r} is {shapes_b[name]} in BASE, {shapes_n[name]} in NEW")
    return reasons[:limit]


def same_architecture(base: nn.Module, new: nn.Module) -> bool:
    """The same module names and parameter names and shapes."""
    return not architecture_mismatch(base, new, limit=1)


@dataclass(frozen=True)
class WeightChange:
    """Per-layer weight change of NEW against BASE; arrays are in ``layers`` order."""

    layers: Tuple[str, ...]               # modules owning parameters, model order ("" = the root)
    params: Tuple[Tuple[str, ...], ...]   # each layer's own parameter names ("weight", "bias", ...)
    sizes: np.ndarray                     # (L,) int64 values per layer
    base_norm: np.ndarray                 # (L,) ||W_base|| over the concatenated own parameters
    change_norm: np.ndarray               # (L,) ||W_new - W_base||
    relative: np.ndarray                  # (L,) change_norm / base_norm (base ~ 0: against 1)
    total_relative: float                 # the same over every parameter of the model

    def layer_values(self) -> Dict[str, float]:
        """Layer -> relative change, for report.json's ``comparison.layers[...].weight_change``."""
        return {name: float(v) for name, v in zip(self.layers, self.relative)}


def weight_change(base: nn.Module, new: nn.Module) -> WeightChange:
    """Relative change of every parameter-owning module; ValueError unless same architecture."""
    mismatch = architecture_mismatch(base, new)
    if mismatch:
        raise ValueError("weight change needs the same architecture: " + "; ".join(mismatch))
    own_b, own_n = _own_params(base), _own_params(new)
    layers = list(own_b)
    base_sq = np.zeros(len(layers))
    diff_sq = np.zeros(len(layers))
    sizes = np.zeros(len(layers), dtype=np.int64)
    with torch.no_grad():
        for i, name in enumerate(layers):
            theirs = dict(own_n[name])
            for pname, pb in own_b[name]:
                pn = theirs[pname]
                wb = pb.detach().double()
                wn = pn.detach().to(device=wb.device, dtype=torch.float64)
                base_sq[i] += float((wb * wb).sum())
                diff_sq[i] += float(((wn - wb) ** 2).sum())
                sizes[i] += wb.numel()
    base_norm, change_norm = np.sqrt(base_sq), np.sqrt(diff_sq)
    total = float(relative(np.sqrt(diff_sq.sum()), np.sqrt(base_sq.sum())))
    return WeightChange(layers=tuple(layers), params=tuple(tuple(n for n, _ in own_b[k]) for k in layers),
                        sizes=sizes, base_norm=base_norm, change_norm=change_norm,
                        relative=relative(change_norm, base_norm), total_relative=total)


@dataclass(frozen=True)
class FilterDiff:
    """One conv layer's filters in BASE, in NEW, and NEW - BASE: each (O', C, kh, kw) float32."""

    layer: str
    base: np.ndarray
    new: np.ndarray
    diff: np.ndarray
    filters_total: int        # O before capping at max_filters
    limit: float              # max |value| over base and new: one symmetric colour scale for both
    diff_limit: float         # max |value| of diff (its own scale: changes are usually small)


def filter_difference(base: nn.Module, new: nn.Module, layer: Optional[str] = None,
                      max_filters: int = 64) -> FilterDiff:
    """Filters of ``layer`` (default: the first Conv2d) side by side and their difference."""
    layer = layer or first_conv(base)
    wb, wn = (getattr(get_layer(m, layer), "weight", None) for m in (base, new))
    if not isinstance(wb, torch.Tensor) or not isinstance(wn, torch.Tensor):
        raise ValueError(f"layer {layer!r} has no weight to show as filters")
    if wb.shape != wn.shape:
        raise ValueError(f"layer {layer!r} has weights {tuple(wb.shape)} in BASE, {tuple(wn.shape)} in NEW")
    vb = filter_view(wb, max_filters)
    vn = filter_view(wn, max_filters)
    d = filter_view(wn.detach().cpu().float() - wb.detach().cpu().float(), max_filters)
    limit = float(max(np.abs(vb).max(initial=0.0), np.abs(vn).max(initial=0.0)))
    return FilterDiff(layer=layer, base=vb, new=vn, diff=d, filters_total=int(wb.shape[0]),
                      limit=limit, diff_limit=float(np.abs(d).max(initial=0.0)))
