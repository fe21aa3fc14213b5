"""First-layer filters as one packed RGB grid with noisy/dead filters framed."""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from reportgen.analyses.filters import FilterResult
from reportgen.render.images import pack_grid, png_uri, upscale_nearest

NOISY = np.array([230, 120, 20], dtype=np.uint8)
DEAD = np.array([150, 150, 150], dtype=np.uint8)
FRAME = 2


def filter_images(w: np.ndarray, normalize: str) -> np.ndarray:
    """(O, I, kh, kw) -> (O, kh, kw, 3) in [0, 1]; non-RGB inputs shown as the channel mean."""
    if w.shape[1] == 3:
        rgb = w.transpose(0, 2, 3, 1)
    else:
        rgb = np.repeat(w.mean(axis=1)[..., None], 3, axis=-1)
    if normalize == "common":
        m = float(np.abs(rgb).max()) or 1.0
        return 0.5 + rgb / (2 * m)
    lo = rgb.reshape(len(rgb), -1).min(1)[:, None, None, None]
    hi = rgb.reshape(len(rgb), -1).max(1)[:, None, None, None]
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return (rgb - lo) / span


def _framed(tile: np.ndarray, colour) -> np.ndarray:
    h, w = tile.shape[:2]
    out = np.empty((h + 2 * FRAME, w + 2 * FRAME, 3), dtype=np.uint8)
    out[:] = colour
    out[FRAME:FRAME + h, FRAME:FRAME + w] = tile
    return out


def render_filters(result: FilterResult, normalize: str) -> Dict:
    imgs = filter_images(result.weights, normalize)
    k = imgs.shape[1]
    factor = max(1, 40 // max(k, 1))
    tiles = []
    for i in result.order:
        tile = (np.clip(upscale_nearest(imgs[i], factor), 0, 1) * 255 + 0.5).astype(np.uint8)
        colour = DEAD if result.dead[i] else NOISY if result.noisy[i] else np.array([255, 255, 255], np.uint8)
        tiles.append(_framed(tile, colour))
    cols = min(16, len(tiles))
    grid, _ = pack_grid(tiles, cols=cols, pad=3, background=1.0)
    rows: List[Dict] = [{"index": int(i), "norm": float(result.norms[i]), "noise": float(result.noise[i]),
                         "flag": "dead" if result.dead[i] else "noisy" if result.noisy[i] else ""}
                        for i in result.order]
    return {"image": png_uri(grid), "width": int(grid.shape[1]), "height": int(grid.shape[0]),
            "rows": rows, "layer": result.layer, "shape": list(result.weights.shape),
            "normalize": normalize, "n_noisy": int(result.noisy.sum()), "n_dead": int(result.dead.sum()),
            "threshold": result.noise_threshold, "noise_note": result.noise_note,
            "band": round(float(result.noise_band), 2),
            "rgb": result.weights.shape[1] == 3}
