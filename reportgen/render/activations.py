"""Feature maps as one packed, colour-mapped grid per probe and layer."""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from reportgen.analyses.activations import ActivationsResult
from reportgen.render.heatmap import colorize
from reportgen.render.images import pack_grid, png_uri, thumbnail_uri, webp_uri


def _grid(maps: np.ndarray) -> np.ndarray:
    """(K, h, w) -> one RGB image at native size; one colour scale for the whole grid
    so channels compare. The browser enlarges it (see `scale`): cheaper than pixels."""
    vmax = float(maps.max()) if maps.size else 1.0
    vmin = min(0.0, float(maps.min())) if maps.size else 0.0
    tiles = [colorize(m, "viridis", vmin, vmax) for m in maps]
    cols = min(16, len(tiles))
    grid, _ = pack_grid(tiles, cols=cols, pad=1, background=1.0)
    return grid


def _scale(h: int) -> int:
    """Display magnification so small maps (7x7) stay readable."""
    return max(1, 32 // max(h, 1))


# how a layer's output was read, said in the caption when it was not (N, C, H, W)
LAYOUT_WORDS = {"nhwc": "read channels-last (N, H, W, C)",
                "tokens": "read from tokens (N, L, C) on their grid, class/register tokens left out"}


def _uri(grid: np.ndarray, map_side: int) -> str:
    # large maps are photo-like: lossy WebP is a fraction of PNG; tiny ones stay exact
    return webp_uri(grid, quality=80) if map_side >= 16 else png_uri(grid)


def grid_uri(maps: np.ndarray) -> str:
    """One probe's (K, h, w) maps as the data URI the page holds."""
    return _uri(_grid(maps), maps.shape[-1])


THUMB = 64          # probe thumbnails are shown at this side


def render_activations(result: ActivationsResult, probes, thumb_side: int = 0) -> Dict:
    """``thumb_side``: store the probe thumbnails at most this large (0: as they are, lossless)."""
    layers: List[Dict] = []
    for la in result.layers:
        per_probe = []
        scale = _scale(la.maps.shape[2])
        for i, probe in enumerate(probes):
            grid = _grid(la.maps[i])
            uri = _uri(grid, la.maps.shape[2])
            per_probe.append({"probe": probe.name, "image": uri,
                              "width": grid.shape[1] * scale, "height": grid.shape[0] * scale,
                              "channels": [int(c) for c in la.channels[i]]})
        layers.append({"layer": la.layer, "shape": la.shape, "sparsity": la.sparsity,
                       "dead": int(la.never_fire.sum()), "certain_dead": int(la.dead.sum()),
                       "channels_total": la.shape[0], "layout": LAYOUT_WORDS.get(la.layout),
                       "shown": int(la.maps.shape[1]), "probes": per_probe})
    return {"layers": layers, "auto": result.auto, "n_probes": result.n_probes,
            "thumbs": [{"name": p.name, "image": thumbnail_uri(p.display, thumb_side)} for p in probes]}
