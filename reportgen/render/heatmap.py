"""Colour maps: any (H, W) map through a colormap (feature maps, heat cells), and attribution maps
laid over the probe image.

Pure numpy + matplotlib colormaps (``matplotlib.colormaps``, no pyplot, so
no GUI backend and no global figure state). Everything returns uint8 RGB
arrays that ``reportgen.render.images`` encodes.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import matplotlib
import numpy as np
from PIL import Image

DEFAULT_CMAP = "inferno"      # perceptually uniform: brightness tracks the value, also in greyscale
SIGNED_CMAP = "RdBu_r"        # diverging, white at zero, for signed attributions


def _finite(a: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(a, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def limits(maps: Iterable[np.ndarray] | np.ndarray) -> Tuple[float, float]:
    """(vmin, vmax) over one or many maps: pass the same pair to every ``colorize`` call
    so maps drawn side by side share one colour scale and one colour bar."""
    arrays = [maps] if isinstance(maps, np.ndarray) else list(maps)
    if not arrays:
        raise ValueError("limits needs at least one map")
    lo = min(float(_finite(a).min()) for a in arrays)
    hi = max(float(_finite(a).max()) for a in arrays)
    return lo, hi


def colorize(values: np.ndarray, cmap: str = DEFAULT_CMAP, vmin: Optional[float] = None,
             vmax: Optional[float] = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through a colormap.

    Without vmin/vmax the map's own range is used (each map scaled alone);
    a constant map gets the colormap's low end rather than a division by zero.
    """
    v = _finite(values)
    if v.ndim != 2:
        raise ValueError(f"colorize needs an (H, W) map, got shape {v.shape}")
    lo = float(v.min()) if vmin is None else float(vmin)
    hi = float(v.max()) if vmax is None else float(vmax)
    unit = np.zeros_like(v) if hi <= lo else np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](unit, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def palette(n: int) -> List[Tuple[int, int, int]]:
    """n distinct RGB colours for categories (classes): tab10, tab20, then evenly spaced turbo."""
    if n <= 10:
        cmap, xs = matplotlib.colormaps["tab10"], [i / 10 + 0.05 for i in range(n)]
    elif n <= 20:
        cmap, xs = matplotlib.colormaps["tab20"], [i / 20 + 0.025 for i in range(n)]
    else:
        cmap, xs = matplotlib.colormaps["turbo"], list(np.linspace(0.05, 0.95, n))
    return [tuple(int(round(c * 255)) for c in cmap(x)[:3]) for x in xs]


def hex_colour(rgb: Tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _resize(values: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (H, W), for maps computed at another resolution."""
    h, w = size
    return np.asarray(Image.fromarray(_finite(values), mode="F").resize((w, h), Image.BILINEAR))


def overlay(image: np.ndarray, values: np.ndarray, alpha: float = 0.5, cmap: str = DEFAULT_CMAP,
            vmin: Optional[float] = None, vmax: Optional[float] = None) -> np.ndarray:
    """Blend the coloured map over an (H, W, 3) uint8 image: (1 - alpha) * image + alpha * colour."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"overlay needs an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    v = _finite(values)
    if v.shape != img.shape[:2]:
        v = _resize(v, img.shape[:2])
    colour = colorize(v, cmap, vmin, vmax).astype(np.float32)
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def colorbar(cmap: str = DEFAULT_CMAP, length: int = 256, thickness: int = 12,
             vertical: bool = False) -> np.ndarray:
    """The colour scale as a uint8 strip, low -> high left to right (or bottom to top).

    Tick labels (vmin, vmax) belong in the HTML next to it, as text that
    stays sharp and searchable, not baked into pixels.
    """
    ramp = np.linspace(0.0, 1.0, length, dtype=np.float32)
    strip = colorize(np.tile(ramp, (thickness, 1)), cmap, 0.0, 1.0)
    return np.ascontiguousarray(np.rot90(strip)) if vertical else strip


def attribution_map(attr: np.ndarray, signed: bool = False, percentile: float = 99.0) -> np.ndarray:
    """Input attributions (C, H, W) or (N, C, H, W) -> displayable (H, W) / (N, H, W) maps.

    Unsigned (default): the sum over channels of |attr|, in [0, 1]. Signed:
    the sum over channels, in [-1, 1] (draw with ``SIGNED_CMAP``, vmin=-1,
    vmax=1). Either way the map is divided by the ``percentile`` of its
    magnitudes and clipped, as Captum's visualizer does: a handful of extreme
    pixels would otherwise squash everything else to black. Per image.
    """
    a = _finite(attr)
    if a.ndim == 3:
        return attribution_map(a[None], signed, percentile)[0]
    if a.ndim != 4:
        raise ValueError(f"attribution_map needs (C, H, W) or (N, C, H, W), got shape {a.shape}")
    m = a.sum(axis=1) if signed else np.abs(a).sum(axis=1)
    out = np.zeros_like(m)
    for i, one in enumerate(m):
        scale = float(np.percentile(np.abs(one), percentile))
        if scale <= 0:
            scale = float(np.abs(one).max())
        if scale > 0:
            out[i] = np.clip(one / scale, -1.0 if signed else 0.0, 1.0)
    return out
