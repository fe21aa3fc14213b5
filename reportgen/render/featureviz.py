"""Feature visualizations as one packed image per group, with labels placed over each tile."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from reportgen.analyses.featureviz import FeatureVizResult
from reportgen.render.images import pack_grid, png_uri, to_uint8, upscale_nearest, webp_uri

DISPLAY = 128     # tiles are shown at about this many px (nearest-neighbour upscaled if smaller)
PAD = 6
MAX_COLS = 6


def ratio_text(ratio: Optional[float]) -> str:
    """'4.2× max' for the achieved/reference ratio; explicit words when it is undefined."""
    if ratio is None:
        return ""
    if not math.isfinite(ratio):
        return "reference max ≤ 0"
    return f"{ratio:.1f}× max"


def _grid(images: np.ndarray, labels: Sequence[str], ratios: Sequence[str]) -> Dict[str, Any]:
    """Pack tiles; return the image and each tile's box as percentages (they scale with the image)."""
    size = images.shape[1]
    factor = max(1, DISPLAY // size)
    tiles = [upscale_nearest(to_uint8(im), factor) for im in images]
    cols = min(MAX_COLS, len(tiles))
    grid, boxes = pack_grid(tiles, cols=cols, pad=PAD, background=1.0)
    h, w = grid.shape[:2]
    # nearest-upscaled tiles compress best losslessly; full-size syntheses are photographic
    uri = png_uri(grid) if factor > 1 else webp_uri(grid, quality=90)
    cells = [{"label": lab, "ratio": rat, "left": f"{100 * x / w:.3f}", "top": f"{100 * y / h:.3f}",
              "width": f"{100 * bw / w:.3f}", "height": f"{100 * bh / h:.3f}"}
             for (x, y, bw, bh), lab, rat in zip(boxes, labels, ratios)]
    return {"image": uri, "width": w, "height": h, "cells": cells, "pixelated": factor > 1, "cols": cols}


def render_featureviz(result: FeatureVizResult, classes: Sequence[str]) -> Dict[str, Any]:
    """Groups (one per layer, then one for classes) for templates/sections/featureviz.html.j2."""
    ratio = result.ratio()
    groups: List[Dict[str, Any]] = []
    keys = list(dict.fromkeys((k, l) for k, l in zip(result.kinds, result.layers)))
    for kind, layer in keys:
        idx = [i for i, (k, l) in enumerate(zip(result.kinds, result.layers)) if (k, l) == (kind, layer)]
        if kind == "channel":
            labels = [f"channel {result.indices[i]}" for i in idx]
        else:
            labels = [classes[result.indices[i]] if 0 <= result.indices[i] < len(classes)
                      else f"class {result.indices[i]}" for i in idx]
        ratios = [ratio_text(float(ratio[i]) if ratio is not None else None) for i in idx]
        group = _grid(result.images[idx], labels, ratios)
        group.update(kind=kind, layer=layer, n=len(idx),
                     rows=[{"label": labels[j], "achieved": float(result.activation[i]),
                            "ref_mean": None if result.reference_mean is None else float(result.reference_mean[i]),
                            "ref_max": None if result.reference_max is None else float(result.reference_max[i]),
                            "ratio": ratios[j]} for j, i in enumerate(idx)])
        groups.append(group)
    return {"groups": groups, "size": result.size, "steps": result.steps, "meta": dict(result.meta)}
