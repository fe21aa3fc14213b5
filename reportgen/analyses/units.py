"""The units whose representation changed most between two models of one architecture.

CKA says *which layer* changed; this says *which channels* of it, and shows
them: for channel c of a layer, both models' activations on the same images
are compared by their correlation across images,

    r_c = sum_f cov(x_f, y_f) / sqrt(sum_f var(x_f) * sum_f var(y_f)),

f running over the channel's cells of the CKA pass's pooled grid (the same
features CKA sees, see ``cka.Reduction``): the Pearson correlation of the
channel's (mean-removed) pooled maps of BASE and NEW over the dataset. 1: the
channel responds to the same images in the same places as before (up to
scale); 0 or below: it now responds to something else. The terms are the
diagonal of the CKA pass's centered cross sums (``CKAMatrixAccumulator.
feature_moments``), so they cost no extra state, shard and merge exactly like
the CKA, and memory stays flat in the dataset size.

A channel is matched with the *same index* in the other model: a permutation
of channels (the same function, CKA 1) reads as every channel changed. The
report shows the per-layer CKA beside it for that reason.

The top-k dataset patches of every channel of the candidate layers ride on
the same forwards (``topk.TopKTracker`` with ``absorb``; (C, k) per layer and
model), so showing the chosen channels afterwards only reads back their
winning images (``topk.finish_topk``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from reportgen.analyses import topk as tk
from reportgen.analyses.cka import CKAMatrixAccumulator, Reduction
from reportgen.model.layout import Layout

UNIT_CHANNELS = 6        # channels shown: the lowest correlations of the chosen layer
UNIT_K = 6               # patches per channel and model
CHANNEL_RULE = ("lowest correlation of the channel's pooled maps between BASE and NEW over the "
                "compared images (a channel that varies in one model only counts as 0; one constant "
                "in both is not ranked)")


@dataclass(frozen=True)
class UnitsPlan:
    """What the dataset pass tracks for the units: layers (same names in both) and top-k depth."""

    layers: Tuple[str, ...]
    base_layouts: Dict[str, Layout]
    new_layouts: Dict[str, Layout]
    k: int = UNIT_K


@dataclass(frozen=True)
class UnitsPass:
    """What the dataset pass leaves for the units: per layer, per channel (C,) terms, and the
    running top-k of every channel of both models."""

    layers: Tuple[str, ...]
    covariance: Dict[str, np.ndarray]       # layer -> (C,) sum over the channel's cells
    base_variance: Dict[str, np.ndarray]    # layer -> (C,)
    new_variance: Dict[str, np.ndarray]     # layer -> (C,)
    base: tk.StreamState
    new: tk.StreamState
    k: int

    def correlation(self, layer: str) -> np.ndarray:
        """(C,) per-channel correlation; NaN where a model's channel is constant."""
        cov, vb, vn = self.covariance[layer], self.base_variance[layer], self.new_variance[layer]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / np.sqrt(vb * vn)
        return np.where((vb > 0) & (vn > 0), np.clip(r, -1.0, 1.0), np.nan)


def channel_moments(acc: CKAMatrixAccumulator, index: int, reduction: Reduction
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(covariance, BASE variance, NEW variance), each (C,), of one pairs-mode layer's channels.

    Features are channel-major (C, gh, gw) flattened (``cka.reduce_features``),
    so channel c owns features c*gh*gw .. (c+1)*gh*gw - 1.
    """
    if reduction.grid is None:
        raise ValueError(f"layer {reduction.layer!r} has no channels with a spatial map")
    c = int(reduction.shape[0])
    return tuple(np.asarray(t, dtype=np.float64).reshape(c, -1).sum(axis=1)   # type: ignore[return-value]
                 for t in acc.feature_moments(index, index))


def units_pass(acc: CKAMatrixAccumulator, layers: Sequence[str], reductions: Sequence[Reduction],
               plan: UnitsPlan, base: tk.StreamState, new: tk.StreamState) -> UnitsPass:
    """Collect the per-channel terms of ``plan.layers`` from a (merged) pairs-mode CKA state."""
    cov, vb, vn = {}, {}, {}
    kept = []
    for name in plan.layers:
        i = list(layers).index(name)
        red = reductions[i]
        if red.grid is None or name not in base.layers or name not in new.layers:
            continue
        cov[name], vb[name], vn[name] = channel_moments(acc, i, red)
        kept.append(name)
    return UnitsPass(tuple(kept), cov, vb, vn, base, new, plan.k)


def most_changed(units: UnitsPass, layer: str, count: int = UNIT_CHANNELS) -> np.ndarray:
    """The ``count`` channels of ``layer`` that changed most (``CHANNEL_RULE``), most changed first."""
    r = units.correlation(layer)
    vb, vn = units.base_variance[layer] > 0, units.new_variance[layer] > 0
    key = np.where(np.isfinite(r), r, np.where(vb | vn, 0.0, np.inf))
    order = np.lexsort((np.arange(r.size), key))            # correlation asc, then index asc
    order = order[np.isfinite(key[order])]
    return order[:count].astype(np.int64)


def choose_layer(units: UnitsPass, cka: Dict[str, Optional[float]]) -> Optional[str]:
    """The tracked layer with the lowest CKA (the largest representation change); ties: the earlier."""
    scored = [(v, i, n) for i, n in enumerate(units.layers)
              if (v := cka.get(n)) is not None and math.isfinite(v)]
    return min(scored)[2] if scored else None


@dataclass(frozen=True)
class UnitsResult:
    """The chosen layer's most-changed channels and their top-k patches in each model."""

    layer: str
    cka: float
    correlation: np.ndarray       # (C,) every channel of ``layer``, NaN where undefined
    channels: np.ndarray          # (S,) shown channels, most changed first
    base: tk.LayerTopK            # rows = ``channels``, in that order
    new: tk.LayerTopK
    n_images: int
    k: int
    channel_rule: str = CHANNEL_RULE

    def channels_json(self) -> List[Dict[str, object]]:
        """report.json rows: per shown channel, its correlation and each model's top-k."""
        out = []
        for row, ch in enumerate(self.channels):
            r = self.correlation[int(ch)]
            out.append({"channel": int(ch), "correlation": None if not np.isfinite(r) else round(float(r), 4),
                        "base_mean_topk": _mean(self.base.values[row]),
                        "new_mean_topk": _mean(self.new.values[row]),
                        "base_top_images": [s for s in self.base.sources[row]],
                        "new_top_images": [s for s in self.new.sources[row]]})
        return out


def _mean(values: np.ndarray) -> Optional[float]:
    v = float(np.mean(values)) if values.size else math.nan
    return round(v, 6) if math.isfinite(v) else None


def finish_units(base_model, new_model, dataset: tk.ImageDataset, units: UnitsPass,
                 cka: Dict[str, Optional[float]], device, input_size: Sequence[int],
                 count: int = UNIT_CHANNELS, batch_size: int = 64) -> Optional[UnitsResult]:
    """Choose the layer and channels, then crop both models' winning patches (reads back only those)."""
    layer = choose_layer(units, cka)
    if layer is None:
        return None
    channels = most_changed(units, layer, count)
    if channels.size == 0:
        return None
    sides = [tk.finish_topk(model, dataset, state, [layer], channels, units.k, device, input_size,
                            batch_size=batch_size).layers[0]
             for model, state in ((base_model, units.base), (new_model, units.new))]
    return UnitsResult(layer=layer, cka=float(cka[layer]), correlation=units.correlation(layer),
                       channels=channels, base=sides[0], new=sides[1], n_images=units.base.n_images,
                       k=min(units.k, units.base.n_images))
