"""Notebook helpers: ``explain()`` results drawn over their images with matplotlib.

    maps = reportgen.explain(model, images, "gradcam")
    show_explanations(images, maps, titles=["circle", "square"], mean=MEAN, std=STD)

The report's own figures are rendered elsewhere (``reportgen.render``); this is
for exploring in Jupyter, where a figure returned by the last line shows inline.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def displayable(images: Any, mean: Optional[Sequence[float]] = None,
                std: Optional[Sequence[float]] = None) -> np.ndarray:
    """(N, C, H, W) preprocessed images -> (N, H, W, 3) in [0, 1]: the normalization undone when
    ``mean`` and ``std`` are given, else each image min-max scaled; one channel becomes grey."""
    x = _numpy(images)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    if mean is not None and std is not None:
        x = x * np.asarray(std, np.float32)[None, :, None, None] + np.asarray(mean, np.float32)[None, :, None, None]
    else:
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-12)
    x = np.clip(x.transpose(0, 2, 3, 1), 0.0, 1.0)
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x[..., :3]


def heatmaps(maps: Any) -> np.ndarray:
    """``explain`` output -> (N, H, W) in [0, 1]: CAM-style maps as they are (min-max scaled), input
    attributions (N, C, H, W) as the absolute value summed over channels, then scaled per image."""
    m = _numpy(maps)
    if m.ndim == 4:
        m = np.abs(m).sum(axis=1)
    if m.ndim != 3:
        raise ValueError(f"maps must be (N, H, W) or (N, C, H, W), got shape {m.shape}")
    lo = m.min(axis=(1, 2), keepdims=True)
    hi = m.max(axis=(1, 2), keepdims=True)
    return (m - lo) / np.maximum(hi - lo, 1e-12)


def show_explanations(images: Any, maps: Any, titles: Optional[Sequence[str]] = None,
                      mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                      alpha: float = 0.5, cmap: str = "jet", columns: int = 6, size: float = 2.2):
    """A matplotlib Figure: each image with its map laid over it (``alpha`` of the map's colour).

    ``images``: the (N, C, H, W) tensor given to ``explain``; ``maps``: its result. Returns the
    Figure (Jupyter shows it; ``fig.savefig(...)`` keeps it) and leaves pyplot's state alone.
    """
    from matplotlib.figure import Figure

    pictures, heat = displayable(images, mean, std), heatmaps(maps)
    if len(pictures) != len(heat) or pictures.shape[1:3] != heat.shape[1:]:
        raise ValueError(f"{len(pictures)} images of {pictures.shape[1:3]} but {len(heat)} maps of {heat.shape[1:]}")
    if titles is not None and len(titles) != len(pictures):
        raise ValueError(f"{len(titles)} titles for {len(pictures)} images")
    n = len(pictures)
    cols = max(1, min(columns, n))
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(size * cols, size * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(pictures[i], interpolation="nearest")
        ax.imshow(heat[i], cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, interpolation="bilinear")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    return fig
