"""How the weights got where they are: one streaming pass over the checkpoint series.

Zeiler & Fergus watched first-layer filters form epoch by epoch; TensorBoard
shows weight histograms and norms over time. Both need every checkpoint, and a
series can be 50 ResNet-50s (5 GB), so nothing here holds the series: each
checkpoint is loaded, reduced to small numbers, and dropped.

Memory plan (why "about three models", never "the series"):

* the **first** checkpoint's parameters stay in memory for the whole pass, since
  every step measures ``||W_t - W_0||`` (re-reading it from disk at every step
  would double the I/O for a one-model saving);
* the **previous** checkpoint's parameters are needed for ``||W_t - W_{t-1}||``.
  When feature maps are wanted, a working copy of the model must exist anyway;
  it holds ``W_{t-1}`` until checkpoint ``t`` is applied to it, so it *is* the
  previous state and no extra dict is kept. Without probes, the previous
  checkpoint's parameter dict is kept instead of a model copy;
* the **current** checkpoint, loaded, measured, applied, dropped.

So the peak is first + previous + current (parameters only; buffers and
optimizer state are dropped on load). The pass loads T + 1 files: the last
checkpoint is read once up front, because histogram bin edges (shared by all
checkpoints, or the histograms would not compare) and the feature-map channels
(the final model's most active, the same at every checkpoint) both depend on it.

Everything returned is numpy and small: the chosen layer's filters (for
ResNet-50's conv1, 64x3x7x7 per checkpoint), norms per parameter tensor, fixed-
edge histogram counts, and a few pooled feature maps.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.model.checkpoints import LoadedCheckpoint, apply_state_dict, load_checkpoint
from reportgen.model.hooks import eval_mode, hooks
from reportgen.model.layers import get_layer, layer_layouts
from reportgen.model.layout import AUTO, Layout
from reportgen.model.loading import model_device
from reportgen.model.outputs import select_output

EPS = 1e-12            # a norm below this is "zero": relative change is then measured against 1
HIST_QUANTILES = (0.1, 99.9)   # robust range: one outlier weight must not squash every histogram
ROBUST_MIN_SIZE = 5000         # smaller tensors (biases) use min..max: every value is a visible share
FMAP_MAX_SIDE = 32     # feature maps are mean-pooled to at most this: enough to see, small to store

Loader = Callable[[Path], LoadedCheckpoint]
Progress = Callable[[Iterable, str, Optional[int]], Iterable]


@dataclass
class EvolutionResult:
    labels: List[str]                 # checkpoint labels, oldest first
    param_names: List[str]            # floating-point parameters, model order
    layer_of: List[str]               # owning module of each parameter ("" for the root)
    norms: np.ndarray                 # (T, P) L2 norm of each parameter tensor
    step_change: np.ndarray           # (T-1, P) ||W_t - W_{t-1}|| (absolute)
    total_change: np.ndarray          # (T, P) ||W_t - W_0|| (row 0 is 0)
    filter_layer: str
    filters: np.ndarray               # (T, O, C, kh, kw): C=3 raw RGB taps, or C=1 the input mean
    filters_total: int                # O before capping at max_filters
    hist_names: List[str]             # parameter tensors with histograms
    hist_edges: np.ndarray            # (H, B+1) one set of edges per tensor, shared by every checkpoint
    hist_counts: np.ndarray           # (T, H, B) int64
    hist_outside: np.ndarray          # (T, H, 2) values below the first / above the last edge
    fmap_layer: Optional[str] = None
    fmap_probe: Optional[str] = None
    fmap_channels: Optional[np.ndarray] = None   # (K,) the final checkpoint's most active channels
    fmaps: Optional[np.ndarray] = None           # (T, K, h, w) float32, pooled to <= FMAP_MAX_SIDE
    fmap_shape: Optional[List[int]] = None       # the layer's real (C, H, W), read through its layout
    fmap_layout: Optional[str] = None            # nchw | nhwc | tokens
    loads: int = 0                    # checkpoint files read (T + 1 for T >= 2)


# --------------------------------------------------------------------------- pure helpers

def norm(t: torch.Tensor) -> float:
    """L2 norm. float32 is enough: an unchanged tensor's difference is exactly 0 anyway, and
    torch's blocked reduction keeps ~1e-6 relative error on 10^7 values; float64 cost 3x."""
    return float(torch.linalg.vector_norm(t.detach()))


def relative(change: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``change / base`` with a zero base treated as 1 (a zero bias that moves has moved)."""
    return change / np.where(base > EPS, base, 1.0)


def aggregate(values: np.ndarray, groups: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    """Combine per-tensor L2 norms (last axis) into per-layer norms: sqrt of summed squares.

    A layer's weight and bias move together in the table, weighted by size,
    which is what "how much did this layer change" means.
    """
    names = list(dict.fromkeys(groups))
    index = {g: i for i, g in enumerate(names)}
    out = np.zeros(values.shape[:-1] + (len(names),), dtype=np.float64)
    for j, g in enumerate(groups):
        out[..., index[g]] += values[..., j].astype(np.float64) ** 2
    return names, np.sqrt(out)


def layer_drift(res: EvolutionResult) -> Dict[str, np.ndarray]:
    """Per-layer relative change: step (T-1, L) vs the previous checkpoint, total (T, L) vs the first."""
    layers, norms = aggregate(res.norms, res.layer_of)
    _, step = aggregate(res.step_change, res.layer_of)
    _, total = aggregate(res.total_change, res.layer_of)
    return {"layers": np.array(layers, dtype=object), "norms": norms,
            "step": relative(step, norms[:-1]), "total": relative(total, norms[:1])}


def frozen_layers(step_rel: np.ndarray, layers: Sequence[str], threshold: float = 1e-6) -> List[str]:
    """Layers whose relative change stays below ``threshold`` at every transition."""
    if step_rel.shape[0] == 0:
        return []
    return [name for name, still in zip(layers, (step_rel < threshold).all(axis=0)) if still]


def pick_even(n: int, k: int) -> List[int]:
    """``k`` indices spread evenly over ``range(n)``, always the first and the last."""
    if n <= k:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def histogram_params(model: nn.Module, max_layers: int = 12) -> List[str]:
    """Weight (and bias) tensors of up to ``max_layers`` conv/linear layers, evenly spread.

    Only layers with a >= 2-D weight: BatchNorm's scale vectors would crowd
    out the layers people reason about, and ResNet-50 has 53 of them.
    """
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.ndim >= 2
              and m.weight.is_floating_point()]
    out: List[str] = []
    for i in pick_even(len(layers), max_layers):
        name, module = layers[i]
        for kind in ("weight", "bias"):
            p = getattr(module, kind, None)
            if isinstance(p, nn.Parameter) and p.is_floating_point():
                out.append(f"{name}.{kind}" if name else kind)
    return out


def hist_edges(first: np.ndarray, last: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges covering the robust range of the first and the last checkpoint.

    Training usually widens distributions, so first and last bracket the
    series; values outside are counted separately rather than stretching the
    axis for everyone. Small tensors use their full range: there, cutting
    0.1% off each end would cut real values, not outliers.
    """
    q_lo, q_hi = HIST_QUANTILES if min(first.size, last.size) >= ROBUST_MIN_SIZE else (0.0, 100.0)
    lo = min(np.percentile(first, q_lo), np.percentile(last, q_lo))
    hi = max(np.percentile(first, q_hi), np.percentile(last, q_hi))
    if not hi > lo:   # a constant tensor (a zero-initialised bias): a small window around it
        pad = abs(lo) * 0.1 or 1e-3
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, bins + 1)


def histogram(values: np.ndarray, edges: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Counts in fixed, equal-width bins plus (below, above) the range."""
    lo, hi = float(edges[0]), float(edges[-1])
    counts, _ = np.histogram(values, bins=len(edges) - 1, range=(lo, hi))
    outside = np.array([(values < lo).sum(), (values > hi).sum()], dtype=np.int64)
    return counts.astype(np.int64), outside


def filter_view(weight: torch.Tensor, max_filters: int) -> np.ndarray:
    """(O, I, kh, kw) -> (O', C, kh, kw): RGB taps kept, other inputs averaged, O capped.

    Storing all input channels of a deep layer (512x256x3x3 per checkpoint)
    would cost megabytes per checkpoint for a picture that shows the mean anyway.
    """
    if weight.ndim != 4:
        raise ValueError(f"the filter layer's weight has shape {tuple(weight.shape)}, "
                         "not a 4-D convolution kernel")
    w = weight.detach()[:max_filters].float().cpu()
    if w.shape[1] != 3:
        w = w.mean(dim=1, keepdim=True)
    return w.numpy().astype(np.float32)


# --------------------------------------------------------------------------- the pass

class _KeyMap:
    """Model parameter name -> checkpoint key (``module.``/``model.`` prefixes differ at times)."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._keys: Optional[Dict[str, str]] = None

    def params(self, sd: Dict[str, torch.Tensor], path: Path) -> Dict[str, torch.Tensor]:
        if self._keys is None:
            self._keys = {n: self._find(n, sd, path) for n in self.names}
        return {n: sd[k] for n, k in self._keys.items()}

    @staticmethod
    def _find(name: str, sd: Dict[str, torch.Tensor], path: Path) -> str:
        candidates = [name] + [p + name for p in ("module.", "model.")] + \
                     [name[len(p):] for p in ("module.", "model.") if name.startswith(p)]
        for key in candidates:
            if key in sd:
                return key
        from reportgen.errors import CheckpointError
        raise CheckpointError(f"the checkpoint has no parameter {name!r}", path)


@dataclass
class _Setup:
    """What the up-front read of the last checkpoint decides for the whole series."""

    last_values: Dict[str, np.ndarray]   # hist tensors of the last checkpoint (for the edges)
    channels: Optional[np.ndarray]


class _Tally:
    """The per-checkpoint numbers, filled one row per checkpoint as the series streams by."""

    def __init__(self, T: int, names: List[str], hist_names: List[str], bins: int):
        self.names, self.hist_names, self.bins = names, hist_names, bins
        self.norms = np.zeros((T, len(names)))
        self.step = np.zeros((max(T - 1, 0), len(names)))
        self.total = np.zeros((T, len(names)))
        self.counts = np.zeros((T, len(hist_names), bins), dtype=np.int64)
        self.outside = np.zeros((T, len(hist_names), 2), dtype=np.int64)
        self.edges = np.zeros((len(hist_names), bins + 1))
        self.filters: List[np.ndarray] = []
        self.maps: List[np.ndarray] = []
        self.fmap_shape: Optional[List[int]] = None

    def norms_and_changes(self, t: int, params: Dict[str, torch.Tensor], first: Dict[str, torch.Tensor],
                          before: Callable[[str], torch.Tensor]) -> None:
        """||W_t||, ||W_t - W_0|| and ||W_t - W_{t-1}|| for every parameter tensor."""
        for j, n in enumerate(self.names):
            self.norms[t, j] = norm(params[n])
            if t:
                self.total[t, j] = norm(params[n] - first[n])
                self.step[t - 1, j] = norm(params[n] - before(n))

    def histograms(self, t: int, params: Dict[str, torch.Tensor]) -> None:
        for h, n in enumerate(self.hist_names):
            self.counts[t, h], self.outside[t, h] = histogram(params[n].numpy().ravel(), self.edges[h])


def evolution(model: nn.Module, paths: Sequence[Path], labels: Sequence[str], filter_layer: str,
              probe: Optional[torch.Tensor] = None, probe_name: Optional[str] = None,
              fmap_layer: Optional[str] = None, channels: int = 8, max_filters: int = 64,
              max_hist_layers: int = 12, bins: int = 40, output_key=None,
              loader: Optional[Loader] = None, progress: Optional[Progress] = None,
              fmap_layout: Union[str, Layout] = AUTO) -> EvolutionResult:
    """Stream the checkpoints once (plus the last one up front) and reduce each to numbers.

    ``model`` is a template and is not modified: feature maps are taken from a
    private copy. ``probe`` is one preprocessed (C, H, W) image; without it (or
    without ``fmap_layer``) feature maps are skipped and no model copy is made.
    ``fmap_layout``: how ``fmap_layer`` holds its map, a Layout or a kind
    ("auto": detected once on the template).
    """
    if len(paths) != len(labels) or not paths:
        raise ValueError("evolution needs one label per checkpoint and at least one checkpoint")
    load = loader or load_checkpoint
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    keys = _KeyMap(names)
    filter_key = f"{filter_layer}.weight"
    if filter_key not in names:
        raise ValueError(f"layer {filter_layer!r} has no weight parameter to show as filters")
    want_maps = probe is not None and fmap_layer is not None
    work = copy.deepcopy(model).eval() if want_maps else None   # holds W_{t-1} between steps
    batch = probe[None].to(model_device(model, probe.device)) if want_maps else None
    layout = None
    if want_maps:
        layout = fmap_layout if isinstance(fmap_layout, Layout) else layer_layouts(
            work, batch, [fmap_layer], fmap_layout, output_key)[fmap_layer]
    tally = _Tally(len(paths), names, histogram_params(model, max_hist_layers), bins)
    setup = _read_last(load, paths[-1], keys, tally.hist_names, work, batch, fmap_layer, channels,
                       output_key, layout) if len(paths) > 1 else None
    picked = setup.channels if setup else None
    first: Dict[str, torch.Tensor] = {}
    prev: Dict[str, torch.Tensor] = {}
    steps = range(len(paths)) if progress is None else progress(range(len(paths)), "evolution", len(paths))
    for t in steps:
        loaded = load(paths[t])
        params = {n: v.detach().float() for n, v in keys.params(loaded.state_dict, paths[t]).items()}
        if t == 0:
            first = params
            tally.edges = _edges(first, setup, tally.hist_names, bins)
        tally.norms_and_changes(t, params, first, prev.__getitem__ if work is None else
                                (lambda n: _param(work, n)))
        tally.filters.append(filter_view(params[filter_key], max_filters))
        tally.histograms(t, params)
        if work is not None:
            apply_state_dict(work, loaded.state_dict, paths[t])
            if picked is None:   # a single checkpoint: it is also the last
                picked = _top_channels(work, batch, fmap_layer, channels, output_key, layout)
            fmap, tally.fmap_shape = _feature_maps(work, batch, fmap_layer, picked, output_key, layout)
            tally.maps.append(fmap)
        prev = params if work is None else {}
        del loaded, params
    return EvolutionResult(
        labels=list(labels), param_names=names, layer_of=[n.rpartition(".")[0] for n in names],
        norms=tally.norms, step_change=tally.step, total_change=tally.total, filter_layer=filter_layer,
        filters=np.stack(tally.filters), filters_total=int(model.get_parameter(filter_key).shape[0]),
        hist_names=tally.hist_names, hist_edges=tally.edges, hist_counts=tally.counts,
        hist_outside=tally.outside, fmap_layer=fmap_layer if want_maps else None,
        fmap_probe=probe_name if want_maps else None,
        fmap_channels=np.asarray(picked, dtype=np.int64) if want_maps else None,
        fmaps=np.stack(tally.maps) if tally.maps else None, fmap_shape=tally.fmap_shape,
        fmap_layout=layout.kind if layout is not None else None,
        loads=len(paths) + (1 if len(paths) > 1 else 0))


def _param(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_parameter(name).detach().float().cpu()


def _read_last(load: Loader, path: Path, keys: _KeyMap, hist_names: Sequence[str],
               work: Optional[nn.Module], batch: Optional[torch.Tensor], fmap_layer: Optional[str],
               channels: int, output_key, layout: Optional[Layout] = None) -> _Setup:
    """Read the last checkpoint once: its histogram ranges and its most active channels."""
    loaded = load(path)
    params = keys.params(loaded.state_dict, path)
    last_values = {n: params[n].detach().float().numpy().ravel().copy() for n in hist_names}
    picked = None
    if work is not None:
        apply_state_dict(work, loaded.state_dict, path)
        picked = _top_channels(work, batch, fmap_layer, channels, output_key, layout)
    return _Setup(last_values=last_values, channels=picked)


def _edges(first: Dict[str, torch.Tensor], setup: Optional[_Setup], hist_names: Sequence[str],
           bins: int) -> np.ndarray:
    rows = []
    for n in hist_names:
        a = first[n].numpy().ravel()
        b = setup.last_values[n] if setup else a
        rows.append(hist_edges(a, b, bins))
    if setup:
        setup.last_values.clear()  # done with them: free before the pass
    return np.array(rows).reshape(len(hist_names), bins + 1)


class _Reached(Exception):
    """Raised from a hook to end the forward pass once the wanted layer has run."""


@torch.no_grad()
def _layer_output(model: nn.Module, batch: torch.Tensor, layer: str, output_key,
                  layout: Optional[Layout] = None) -> torch.Tensor:
    """The layer's output for ``batch``, without running the layers after it.

    One forward per checkpoint is the pass's main cost; for ResNet-50's
    middle stage, stopping there skips more than half of the network. A
    module called more than once gives its first call's output.
    """
    captured: List[torch.Tensor] = []

    def grab(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise _Reached

    with eval_mode(model), hooks() as hs:
        hs.append(get_layer(model, layer).register_forward_hook(grab))
        try:
            select_output(model(batch), output_key)
        except _Reached:
            pass
    out = captured[0] if captured else None
    if torch.is_tensor(out) and layout is not None:
        out = layout.to_nchw(out)
    if out is None or not torch.is_tensor(out) or out.ndim != 4:
        shape = tuple(out.shape) if torch.is_tensor(out) else None
        raise ValueError(f"layer {layer!r} gives {shape}, not an (N, C, H, W) feature map")
    return out[0].float()


def _top_channels(model: nn.Module, batch: torch.Tensor, layer: str, k: int, output_key,
                  layout: Optional[Layout] = None) -> np.ndarray:
    """The ``k`` channels with the highest mean activation (ties by index, so it is stable)."""
    mean = _layer_output(model, batch, layer, output_key, layout).mean(dim=(1, 2)).cpu().numpy()
    order = np.lexsort((np.arange(mean.size), -mean))
    return order[:k].astype(np.int64)


def _feature_maps(model: nn.Module, batch: torch.Tensor, layer: str, picked: np.ndarray,
                  output_key, layout: Optional[Layout] = None) -> Tuple[np.ndarray, List[int]]:
    """The picked channels, pooled to at most FMAP_MAX_SIDE, and the layer's real (C, H, W)."""
    full = _layer_output(model, batch, layer, output_key, layout)
    out = full[torch.as_tensor(picked, device=full.device)]
    h, w = out.shape[-2:]
    if max(h, w) > FMAP_MAX_SIDE:
        size = (max(1, round(h * FMAP_MAX_SIDE / max(h, w))), max(1, round(w * FMAP_MAX_SIDE / max(h, w))))
        out = F.adaptive_avg_pool2d(out[None], size)[0]
    return out.cpu().numpy().astype(np.float32), list(full.shape)
