"""First-layer filters and how noisy they are.

Well-trained first-layer filters are smooth (edges, colour blobs, Gabor-like);
noisy, salt-and-pepper kernels point at under-training or too little
regularization (seeds: CNN visualization, weight visualization). The score
here makes that visual judgement a number, and a test against the i.i.d.
noise null makes the verdict fair across kernel sizes: a 3x3 kernel has so
few neighbour pairs that pure noise scores anywhere in 0.6-1.4, while an
11x11 one pins noise near 1. A filter is called noisy only when it is rough
(above the user's threshold) *and* its roughness lies inside the band that
random filters of the same shape reach (not significantly smoother than noise).

The test has a floor, below which no filter is called noisy and the result
says why (``noise_note``): kernels under 5x5 (a 3x3 kernel has 12 neighbour
pairs, and i.i.d. noise scores anywhere in 0.6-1.4, so half of the trained 3x3
stem filters of an ImageNet EfficientNet-Lite0 fall inside the noise band),
and layers of fewer than 8 filters (the finding's share cannot be read off a
handful).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Tuple

import numpy as np
import torch
from torch import nn

from reportgen.model.layers import get_layer


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
    noise_band: float = 0.0  # roughness that NOISE_ALPHA of i.i.d. filters of this shape stay below
    noise_note: str = ""     # why no filter is judged noisy (under the evidence floor); "" when judged


NOISE_ALPHA = 0.05       # a filter smoother than 95% of random filters of its shape is structured
NULL_SAMPLES = 2000      # random filters drawn per shape: the 5% quantile to about +-0.01
_NULL_TAPS = 1 << 22     # at most this many random taps per shape (deep layers: fewer filters)
_NULL_CHUNK = 1 << 21    # taps drawn at once (16 MB of float64), whatever the shape
MIN_NOISE_KERNEL = 5     # smallest kernel side the noise test judges: 3x3 noise spans 0.6-1.4
MIN_NOISE_FILTERS = 8    # fewest filters whose noisy share is judged


def roughness(weights: np.ndarray) -> np.ndarray:
    """Mean squared difference of neighbouring taps over twice the tap variance.

    For i.i.d. noise E[(a-b)^2] = 2 var, so the score is ~1; a smooth kernel
    scores near 0; 1x1 kernels have no neighbours and score 0. The variance
    is the unbiased one (ddof=1): with the biased one a 3x3 single-channel
    noise kernel averaged 1.12, not 1, because its 9 taps under-estimate it.
    """
    o = weights.shape[0]
    w = weights.reshape(o, -1, *weights.shape[-2:]).astype(np.float64)
    dy = np.diff(w, axis=-2) ** 2
    dx = np.diff(w, axis=-1) ** 2
    n = dy[0].size + dx[0].size
    if n == 0:
        return np.zeros(o, dtype=np.float32)
    mean_sq_diff = (dy.reshape(o, -1).sum(1) + dx.reshape(o, -1).sum(1)) / n
    taps = w[0].size
    var = w.reshape(o, -1).var(axis=1, ddof=1) if taps > 1 else np.zeros(o)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(var > 0, mean_sq_diff / (2 * var), 0.0)
    return score.astype(np.float32)


@lru_cache(maxsize=32)
def noise_band(shape: Tuple[int, ...], alpha: float = NOISE_ALPHA, samples: int = NULL_SAMPLES) -> float:
    """The ``alpha``-quantile of roughness over i.i.d. Gaussian filters of ``shape`` (I, kh, kw).

    Why simulate: the estimator's spread depends on the number of neighbour
    pairs and taps in a way with no handy closed form, and a seeded draw is
    exact enough (and the same on every machine). Roughness is scale-free, so
    the noise's variance does not matter. Kernels with many taps (a deep
    layer chosen by hand, 512x3x3) draw fewer filters and read the quantile
    off a normal fit: there the score is an average of thousands of pairs,
    so it is close to normal, and drawing 2000 of them would take seconds.
    """
    shape = tuple(int(v) for v in shape)
    taps = int(np.prod(shape))
    if taps < 2 or shape[-1] * shape[-2] < 2:
        return 0.0
    n = min(samples, max(256, _NULL_TAPS // taps))
    rng = np.random.default_rng(0)
    per_chunk = max(1, _NULL_CHUNK // taps)
    scores = np.concatenate([roughness(rng.standard_normal((min(per_chunk, n - i),) + shape))
                             for i in range(0, n, per_chunk)]).astype(np.float64)
    if n == samples:
        return float(np.quantile(scores, alpha))
    return float(scores.mean() + NormalDist().inv_cdf(alpha) * scores.std(ddof=1))


def first_layer_filters(model: nn.Module, layer: str, noise_threshold: float = 0.75,
                        sort: str = "norm") -> FilterResult:
    """The layer's kernels, their norms and roughness, and which look dead or noisy.

    Noisy = roughness above ``noise_threshold`` and above :func:`noise_band`
    for the kernel's shape, i.e. not distinguishable from random init.
    """
    module = get_layer(model, layer)
    weight = getattr(module, "weight", None)
    if not torch.is_tensor(weight) or weight.ndim != 4:
        raise ValueError(f"layer {layer!r} ({type(module).__name__}) has no 4-D convolution weight")
    w = weight.detach().float().cpu().numpy()
    norms = np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(1)).astype(np.float32)
    scale = float(np.median(norms)) if norms.size else 0.0
    dead = norms <= max(1e-8, 1e-3 * scale)
    noise = roughness(w)
    band = noise_band(w.shape[1:])
    note = noise_floor_note(w.shape)
    noisy = (noise > noise_threshold) & (noise > band) & ~dead & (w.shape[-1] * w.shape[-2] > 1) & (not note)
    if sort == "noise":
        order = np.lexsort((np.arange(len(w)), noise))
    elif sort == "index":
        order = np.arange(len(w))
    else:  # strongest first: the filters that matter most lead the grid
        order = np.lexsort((np.arange(len(w)), -norms))
    return FilterResult(layer=layer, weights=w, norms=norms, noise=noise, dead=dead, noisy=noisy,
                        order=order.astype(np.int64), noise_threshold=noise_threshold,
                        noise_band=band, noise_note=note)


def noise_floor_note(shape: Tuple[int, ...]) -> str:
    """Why the noise test cannot judge a (O, I, kh, kw) weight, or "" when it can."""
    kh, kw = int(shape[-2]), int(shape[-1])
    if min(kh, kw) < MIN_NOISE_KERNEL:
        return (f"{kh}x{kw} kernels are not judged noisy: under {MIN_NOISE_KERNEL}x{MIN_NOISE_KERNEL}, "
                "i.i.d. noise scores anywhere from about 0.6 to 1.4, so trained filters fall inside its band")
    if int(shape[0]) < MIN_NOISE_FILTERS:
        return (f"{int(shape[0])} filters are not judged noisy: the noisy share needs at least "
                f"{MIN_NOISE_FILTERS} filters")
    return ""
