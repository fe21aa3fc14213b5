"""Encoding arrays as inline images, and packing many small maps into one.

Reports hold one packed PNG per grid rather than hundreds of <img> tags:
fewer bytes of base64 overhead and a page that renders at once.
"""
from __future__ import annotations

import base64
import io
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Float [0, 1] (or uint8) to uint8, clipping; NaN becomes 0."""
    if arr.dtype == np.uint8:
        return arr
    a = np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of an (H, W), (H, W, 3) or (H, W, 4) array; deterministic (no metadata)."""
    img = Image.fromarray(to_uint8(arr))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def encode_webp(arr: np.ndarray, quality: int = 85) -> bytes:
    """Lossy WebP for photographic content (probe overlays), far smaller than PNG."""
    img = Image.fromarray(to_uint8(arr))
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=quality, method=6)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def png_uri(arr: np.ndarray) -> str:
    return data_uri(encode_png(arr), "image/png")


def webp_uri(arr: np.ndarray, quality: int = 85) -> str:
    return data_uri(encode_webp(arr, quality), "image/webp")


def downscale(arr: np.ndarray, side: int) -> np.ndarray:
    """A uint8 image whose longer side is at most ``side`` (area-averaged, aspect kept); else as is."""
    h, w = arr.shape[:2]
    if max(h, w) <= side:
        return arr
    scale = side / float(max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(to_uint8(arr)).resize(size, Image.BOX))


def thumbnail_uri(arr: np.ndarray, side: int = 0) -> str:
    """A probe thumbnail: lossless as it is (``side`` 0), or for a page short of room,
    WebP at most ``side`` pixels a side."""
    if not side:
        return png_uri(arr)
    return webp_uri(downscale(arr, side), quality=85)


def upscale_nearest(arr: np.ndarray, factor: int) -> np.ndarray:
    """Blow small maps (3x3 kernels, 7x7 feature maps) up so pixels stay crisp."""
    if factor <= 1:
        return arr
    return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def pack_grid(tiles: Sequence[np.ndarray], cols: int, pad: int = 2,
              background: float = 1.0) -> Tuple[np.ndarray, List[Tuple[int, int, int, int]]]:
    """Pack equally sized tiles (H, W[, 3]) row-major into one image.

    Returns the image and each tile's (x, y, w, h) box so templates can place
    labels or hover regions over the packed picture.
    """
    if not tiles:
        raise ValueError("pack_grid needs at least one tile")
    h, w = tiles[0].shape[:2]
    colour = tiles[0].ndim == 3
    rows = (len(tiles) + cols - 1) // cols
    shape = (rows * (h + pad) + pad, cols * (w + pad) + pad) + ((3,) if colour else ())
    if tiles[0].dtype == np.uint8:
        canvas = np.full(shape, int(background * 255), dtype=np.uint8)
    else:
        canvas = np.full(shape, background, dtype=np.float32)
    boxes = []
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y:y + h, x:x + w] = t
        boxes.append((x, y, w, h))
    return canvas, boxes
