"""First-layer filters and how noisy they are.

Well-trained first-layer filters are smooth (edges, colour blobs, Gabor-like);
noisy, salt-and-pepper kernels point at under-training or too little
regularization (seeds: CNN visualization, weight visualization). The score
here makes that visual judgement a number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch
from torch import nn

from reportgen.layers import get_layer


@dataclass
class FilterResult:
    layer: str
    weights: np.ndarray      # (O, I, kh, kw) float32
    norms: np.ndarray        # (O,) L2 norm per filter
    noise: np.ndarray        # (O,) roughness score, ~1 for white noise, ~0 for smooth
    dead: np.ndarray         # (O,) bool
    noisy: np.ndarray        # (O,) bool
    order: np.ndarray        # display order (indices into O)
    noise_threshold: float


def roughness(weights: np.ndarray) -> np.ndarray:
    """Mean squared difference of neighbouring taps over twice the tap variance.

    For i.i.d. noise E[(a-b)^2] = 2 var, so the score is ~1; a smooth kernel
    scores near 0; 1x1 kernels have no neighbours and score 0.
    """
    o = weights.shape[0]
    w = weights.reshape(o, -1, *weights.shape[-2:]).astype(np.float64)
    dy = np.diff(w, axis=-2) ** 2
    dx = np.diff(w, axis=-1) ** 2
    n = dy[0].size + dx[0].size
    if n == 0:
        return np.zeros(o, dtype=np.float32)
    mean_sq_diff = (dy.reshape(o, -1).sum(1) + dx.reshape(o, -1).sum(1)) / n
    var = w.reshape(o, -1).var(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(var > 0, mean_sq_diff / (2 * var), 0.0)
    return score.astype(np.float32)


def first_layer_filters(model: nn.Module, layer: str, noise_threshold: float = 0.75,
                        sort: str = "norm") -> FilterResult:
    module = get_layer(model, layer)
    weight = getattr(module, "weight", None)
    if not torch.is_tensor(weight) or weight.ndim != 4:
        raise ValueError(f"layer {layer!r} ({type(module).__name__}) has no 4-D convolution weight")
    w = weight.detach().float().cpu().numpy()
    norms = np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(1)).astype(np.float32)
    scale = float(np.median(norms)) if norms.size else 0.0
    dead = norms <= max(1e-8, 1e-3 * scale)
    noise = roughness(w)
    noisy = (noise > noise_threshold) & ~dead & (w.shape[-1] * w.shape[-2] > 1)
    if sort == "noise":
        order = np.lexsort((np.arange(len(w)), noise))
    elif sort == "index":
        order = np.arange(len(w))
    else:  # strongest first: the filters that matter most lead the grid
        order = np.lexsort((np.arange(len(w)), -norms))
    return FilterResult(layer=layer, weights=w, norms=norms, noise=noise, dead=dead, noisy=noisy,
                        order=order.astype(np.int64), noise_threshold=noise_threshold)
