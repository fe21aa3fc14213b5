"""Top-k patches as one packed image per layer: rows = channels, columns = ranks.

One image per layer (not channels × k <img> tags) keeps the page light; the
values and source images go in a table next to it, row for row, so the
picture holds no text (no fonts, byte-identical on every machine).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np

from reportgen.analyses.topk import LayerTopK, TopKResult
from reportgen.render.images import pack_grid, webp_uri

MIN_TILE = 64     # patches are shown (browser-enlarged, pixelated) at least this many pixels a side
PAD = 3


def _factor(side: int) -> int:
    """Integer nearest-neighbour zoom that makes a ``side``-pixel patch readable."""
    return max(1, math.ceil(MIN_TILE / max(side, 1)))


def _encode(grid: np.ndarray) -> str:
    """Patches are photo crops: lossy WebP at native size is a fraction of PNG
    (the browser does the enlarging, so the display factor costs no bytes)."""
    return webp_uri(grid, quality=85)


def projection_rgb(g: np.ndarray) -> np.ndarray:
    """A raw (h, w, C) projection as RGB floats in [0, 1]: grey is 0, scaled per patch by max |g|.

    Per-patch scaling because projections of different units differ by orders
    of magnitude; the pattern (what in the patch drives the unit) is what counts.
    """
    peak = float(np.abs(g).max()) if g.size else 0.0
    out = 0.5 + g / (2 * peak) if peak > 0 else np.full_like(g, 0.5)
    out = np.clip(out, 0.0, 1.0)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out[..., :3]


def _grid(tiles: List[np.ndarray], cols: int) -> np.ndarray:
    grid, _ = pack_grid(list(tiles), cols=cols, pad=PAD, background=1.0)
    return grid


def layer_view(la: LayerTopK) -> Dict[str, Any]:
    s, k = la.values.shape
    ph, pw = la.patches.shape[2:4]
    factor = _factor(max(ph, pw))
    view: Dict[str, Any] = {
        "layer": la.layer, "shape": list(la.shape), "rf": [int(v) for v in la.rf["size"]],
        "jump": [int(v) for v in la.rf["jump"]], "rows": [], "n_channels": s,
        "scaled": [ph, pw] != [int(v) for v in la.rf["size"]], "image": None, "projection": None,
        "dead": int((la.channel_max <= 0).sum()), "channels_total": int(la.shape[0]),
        "rf_note": la.rf_note,
    }
    if s == 0 or k == 0:
        return view
    # packed at native size and enlarged by the browser (width/height below):
    # a nearest-neighbour blow-up inside the file only costs bytes
    tiles = [la.patches[r, j] for r in range(s) for j in range(k)]
    grid = _grid(tiles, k)
    view.update(image=_encode(grid), width=grid.shape[1] * factor,
                height=grid.shape[0] * factor)
    if la.projections is not None:
        proj = [(projection_rgb(la.projections[r, j]) * 255 + 0.5).astype(np.uint8)
                for r in range(s) for j in range(k)]
        pgrid = _grid(proj, k)
        view["projection"] = _encode(pgrid)
    for r in range(s):
        view["rows"].append({
            "channel": int(la.channels[r]), "score": float(la.score[la.channels[r]]),
            "cells": [{"value": float(la.values[r, j]), "source": la.sources[r][j],
                       "index": int(la.images[r, j]), "y": int(la.ys[r, j]), "x": int(la.xs[r, j])}
                      for j in range(k)]})
    return view


def render_topk(result: TopKResult) -> Dict[str, Any]:
    """The partial's view: one packed image (and optional projection image) per layer."""
    return {"layers": [layer_view(la) for la in result.layers], "k": result.k,
            "n_images": result.n_images, "projection": result.projection,
            "channel_rule": result.channel_rule}
