"""Feature maps as one packed, colour-mapped grid per probe and layer."""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from reportgen.analyses.activations import ActivationsResult
from reportgen.render.colormap import apply_cmap
from reportgen.render.images import pack_grid, png_uri, upscale_nearest


def _grid(maps: np.ndarray) -> np.ndarray:
    """(K, h, w) -> one RGB image; one colour scale for the whole grid so channels compare."""
    vmax = float(maps.max()) if maps.size else 1.0
    vmin = min(0.0, float(maps.min())) if maps.size else 0.0
    h = maps.shape[1]
    factor = max(1, 32 // max(h, 1))
    tiles = [upscale_nearest(apply_cmap(m, "viridis", vmin, vmax), factor) for m in maps]
    cols = min(16, len(tiles))
    grid, _ = pack_grid(tiles, cols=cols, pad=2, background=1.0)
    return grid


def render_activations(result: ActivationsResult, probes) -> Dict:
    layers: List[Dict] = []
    for la in result.layers:
        per_probe = []
        for i, probe in enumerate(probes):
            grid = _grid(la.maps[i])
            per_probe.append({"probe": probe.name, "image": png_uri(grid),
                              "channels": [int(c) for c in la.channels[i]]})
        layers.append({"layer": la.layer, "shape": la.shape, "sparsity": la.sparsity,
                       "dead": int(la.dead.sum()), "channels_total": la.shape[0],
                       "shown": int(la.maps.shape[1]), "probes": per_probe})
    return {"layers": layers, "auto": result.auto, "n_probes": result.n_probes,
            "thumbs": [{"name": p.name, "image": png_uri(p.display)} for p in probes]}
