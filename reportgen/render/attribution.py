"""Attribution figures: per probe, the image and each method's map side by side.

One packed image per probe and figure (``pack_grid``), every map in it drawn
on ONE colour scale, so a reader compares methods by colour alone; the colour
bar is a separate strip whose min/max labels the template writes as text.
Overlays are photo-like, so each figure is encoded as WebP when that is much
smaller than PNG (it usually is, by 3-5x) and as PNG otherwise.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image

from reportgen.render.heatmap import DEFAULT_CMAP, colorbar, overlay
from reportgen.render.images import data_uri, downscale, encode_png, encode_webp, pack_grid, upscale_nearest

METHOD_LABELS = {
    "cam": "CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM",
    "eigencam": "Eigen-CAM", "saliency": "Saliency", "deconvnet": "Deconvnet",
    "guided_backprop": "Guided backprop", "integrated_gradients": "Integrated gradients",
    "smoothgrad": "SmoothGrad", "occlusion": "Occlusion",
}

MIN_TILE = 128          # tiles smaller than this are blown up (nearest) so a 64 px probe stays legible
ALPHA = 0.5             # heatmap weight in an overlay: the object stays visible under the colours
WEBP_RATIO = 0.7        # use WebP only when it saves at least 30 % over PNG
PAD = 4


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def compact_uri(arr: np.ndarray) -> Tuple[str, str]:
    """(data URI, format): WebP when it is much smaller than the (lossless) PNG, else PNG."""
    png = encode_png(arr)
    webp = encode_webp(arr, quality=85)
    if len(webp) <= WEBP_RATIO * len(png):
        return data_uri(webp, "image/webp"), "webp"
    return data_uri(png, "image/png"), "png"


def tile_factor(h: int, w: int) -> int:
    """Integer upscale that brings the longer side to at least MIN_TILE pixels."""
    return max(1, int(math.ceil(MIN_TILE / max(h, w, 1))))


def _display(image: np.ndarray, factor: int) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return upscale_nearest(img, factor)


def strip(image: np.ndarray, maps: Sequence[np.ndarray], vmin: float, vmax: float,
          cmap: str = DEFAULT_CMAP, extra: Sequence[np.ndarray] = (), max_side: int = 0) -> Dict[str, object]:
    """The original then one overlay per map, packed in a row, all on [vmin, vmax].

    ``extra`` tiles (already RGB, the image's size) are appended after the
    overlays (the occlusion class map). ``max_side`` > 0 shrinks tiles larger
    than that (the image area-averaged, the maps resized by ``overlay``, class
    maps by nearest neighbour), for a page that must stay small. Returns ``image`` (data URI), ``width``, ``height``,
    ``tiles`` and ``format`` for the template.
    """
    h, w = image.shape[:2]
    factor = tile_factor(h, w)
    if max_side and max(h, w) * factor > max_side and factor == 1:
        image = downscale(np.asarray(image, dtype=np.uint8), max_side)
        shape = image.shape[:2]
        extra = [np.asarray(Image.fromarray(np.asarray(t, dtype=np.uint8)).resize(shape[::-1], Image.NEAREST))
                 for t in extra]
    base = _display(image, factor)
    tiles = [base] + [overlay(base, m, ALPHA, cmap, vmin, vmax) for m in maps]
    tiles += [upscale_nearest(np.asarray(t, dtype=np.uint8), factor) for t in extra]
    packed, _ = pack_grid(tiles, cols=len(tiles), pad=PAD, background=1.0)
    uri, fmt = compact_uri(packed)
    return {"image": uri, "width": int(packed.shape[1]), "height": int(packed.shape[0]),
            "tiles": len(tiles), "format": fmt}


def colorbar_view(vmin: float, vmax: float, cmap: str = DEFAULT_CMAP, low: str = "", high: str = "") -> Dict:
    """The colour bar strip (PNG: flat colours compress well) and its end labels as text."""
    bar = colorbar(cmap, length=256, thickness=12)
    return {"image": data_uri(encode_png(bar)), "lo": vmin, "hi": vmax, "low": low, "high": high,
            "cmap": cmap}


def symmetric_limit(maps: Sequence[np.ndarray]) -> float:
    """max |value| over the maps (at least a tiny positive number), for a diverging scale."""
    top = max((float(np.nanmax(np.abs(m))) for m in maps if np.size(m)), default=0.0)
    return top if top > 0 else 1e-6


# --------------------------------------------------------------------------- categorical class maps

def class_map_pixels(top: np.ndarray, positions: np.ndarray, window: Tuple[int, int],
                     size: Tuple[int, int]) -> np.ndarray:
    """(nY, nX) class per occluder position -> (H, W): each pixel takes the position whose
    window centre is nearest, so the map lines up with the image under it."""
    h, w = size
    ys = np.unique(positions[:, 0]) + (window[0] - 1) / 2.0
    xs = np.unique(positions[:, 1]) + (window[1] - 1) / 2.0
    iy = np.abs(np.arange(h)[:, None] - ys[None, :]).argmin(axis=1)
    ix = np.abs(np.arange(w)[:, None] - xs[None, :]).argmin(axis=1)
    return top[iy[:, None], ix[None, :]]


def class_map_tile(image: np.ndarray, classes_px: np.ndarray, colours: Dict[int, Tuple[int, int, int]],
                   alpha: float = 0.65) -> np.ndarray:
    """Categorical colours blended over the image (alpha = colour weight)."""
    rgb = np.zeros(classes_px.shape + (3,), dtype=np.float32)
    for c, col in colours.items():
        rgb[classes_px == c] = col
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.clip((1 - alpha) * img + alpha * rgb + 0.5, 0, 255).astype(np.uint8)

