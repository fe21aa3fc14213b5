"""A deterministic image task whose answer is known: one coloured shape on clutter.

Why this task: the demo must prove that the report's explanations point at the
right pixels, so every image carries the exact bounding box of its one object.
The class is defined by the object's *shape* only; its colour, size, rotation
and position are random, and the background is low-contrast clutter (blobs,
lines, smooth noise). A network can therefore only be right by looking at the
object, and a saliency map that lights up the background is visibly wrong.

Everything is drawn with numpy's ``Generator`` (PCG64) and Pillow's
``ImageDraw``, never with torch's RNG, so the same seed gives the same bytes
across torch versions. Image ``i`` consumes random numbers in a fixed order
from one stream, so ``make_split(n, seed)`` is a prefix of
``make_split(m, seed)`` for ``n <= m``.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES: List[str] = ["circle", "square", "triangle", "cross"]
SIZE = 64

# Parameters of the task; they go into the demo manifest so a change of task
# is never mistaken for a reusable earlier run.
AREA = (200.0, 520.0)         # object area in pixels, same range for every class
MARGIN = 2                    # object keeps this far from the image border
MIN_CONTRAST = 90             # object colour differs from the background base by this much
CLUTTER_AMPLITUDE = 22        # smooth background noise, +- this much
CLUTTER_SHAPES_CONTRAST = 28  # clutter lines/blobs, +- this much from the base
FINE_NOISE = 6                # per-pixel noise, +- this much

PARAMS = {
    "classes": CLASSES, "size": SIZE, "area": list(AREA), "margin": MARGIN,
    "min_contrast": MIN_CONTRAST, "clutter_amplitude": CLUTTER_AMPLITUDE,
    "clutter_shapes_contrast": CLUTTER_SHAPES_CONTRAST, "fine_noise": FINE_NOISE,
}

# Area of each shape with circumradius 1. Sizes are drawn as areas, not radii:
# at equal radius a triangle covers half the pixels of a circle, and a GAP
# network then learns "much background => triangle", a size cue that makes
# its class activation maps light up the background instead of the object.
_CROSS_HALF_WIDTH = 0.3
_AREA_PER_R2 = {
    "circle": float(np.pi),
    "square": 2.0,
    "triangle": 3 * np.sqrt(3) / 4,
    "cross": 2 * (2 * 2 * _CROSS_HALF_WIDTH) - (2 * _CROSS_HALF_WIDTH) ** 2,
}

Box = Tuple[int, int, int, int]


def make_split(n: int, seed: int, with_masks: bool = False) -> tuple:
    """``n`` images with labels and boxes, all determined by ``seed``.

    Returns ``images`` uint8 (N, 64, 64, 3), ``labels`` int64 (N,) and ``boxes``
    int64 (N, 4) as ``(x0, y0, x1, y1)`` in pixels with x1/y1 *exclusive* (the
    tight box of the object's pixels: ``x0 <= x < x1``, PIL's crop convention).
    Labels cycle through the classes (``i % 4``) so every split is balanced.
    With ``with_masks`` a fourth array, bool (N, 64, 64), holds each object's
    exact pixels (for tests and mask-based localization scores).
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    boxes = np.empty((n, 4), dtype=np.int64)
    masks = np.empty((n, SIZE, SIZE), dtype=bool)
    for i in range(n):
        images[i], masks[i] = _draw_one(rng, int(labels[i]))
        boxes[i] = _tight_box(masks[i])
    return (images, labels, boxes, masks) if with_masks else (images, labels, boxes)


def object_mask(label: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Boolean (64, 64) mask of one shape; public so tests can check boxes against it."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in _shape_polygons(CLASSES[label], cx, cy, radius, angle):
        if polygon is None:
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        else:
            draw.polygon(polygon, fill=255)
    return np.asarray(mask) > 0


def _draw_one(rng: np.random.Generator, label: int) -> Tuple[np.ndarray, np.ndarray]:
    """One image and its object mask; the order of RNG draws here defines the dataset."""
    base = rng.uniform(50, 205) + rng.uniform(-15, 15, size=3)
    background = _background(rng, base)
    radius = float(np.sqrt(rng.uniform(*AREA) / _AREA_PER_R2[CLASSES[label]]))
    lo, hi = radius + MARGIN, SIZE - 1 - radius - MARGIN
    cx, cy = rng.uniform(lo, hi, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    colour = _object_colour(rng, base)
    mask = object_mask(label, cx, cy, radius, angle)
    image = np.where(mask[..., None], colour, background)
    fine = rng.integers(-FINE_NOISE, FINE_NOISE + 1, size=image.shape)
    image = np.clip(image.astype(np.int64) + fine, 0, 255).astype(np.uint8)
    return image, mask


def _background(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """Low-contrast clutter: smooth noise, then a few faint lines and blobs.

    The clutter stays within a few tens of grey levels of ``base`` while the
    object is at least MIN_CONTRAST away, so it can never look like an object.
    """
    coarse = rng.uniform(-CLUTTER_AMPLITUDE, CLUTTER_AMPLITUDE, size=(3, 5, 5))
    smooth = (_UP @ coarse @ _UP.T).transpose(1, 2, 0)
    canvas = Image.fromarray(np.clip(base + smooth, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0, x1, y1 = rng.uniform(0, SIZE, size=4)
        draw.line([x0, y0, x1, y1], fill=_clutter_colour(rng, base), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(2, 5))):
        x, y = rng.uniform(0, SIZE, size=2)
        rx, ry = rng.uniform(2, 6, size=2)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=_clutter_colour(rng, base))
    return np.asarray(canvas)


def _clutter_colour(rng: np.random.Generator, base: np.ndarray) -> Tuple[int, int, int]:
    c = np.clip(base + rng.uniform(-CLUTTER_SHAPES_CONTRAST, CLUTTER_SHAPES_CONTRAST, size=3), 0, 255)
    return tuple(int(v) for v in c)


def _object_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A random saturated colour that stands out from the background base.

    Colour is random per object so that it carries no class information.
    Rejection sampling; the bound keeps the draw count finite in theory too.
    """
    for _ in range(1000):
        colour = rng.integers(0, 256, size=3)
        if np.max(np.abs(colour - base)) >= MIN_CONTRAST:
            return colour.astype(np.uint8)
    return np.where(base < 128, 255, 0).astype(np.uint8)


def _shape_polygons(name: str, cx: float, cy: float, r: float, angle: float) -> list:
    """Polygons (lists of (x, y)) drawing one shape; ``None`` stands for the circle."""
    if name == "circle":
        return [None]
    if name == "square":
        return [_regular(cx, cy, r, angle, 4)]
    if name == "triangle":
        return [_regular(cx, cy, r, angle, 3)]
    if name == "cross":
        half = _CROSS_HALF_WIDTH * r  # thick enough to survive at the smallest size
        arm = [(-r, -half), (r, -half), (r, half), (-r, half)]
        return [_rotate(arm, cx, cy, angle), _rotate(arm, cx, cy, angle + np.pi / 2)]
    raise ValueError(f"unknown shape {name!r}; valid: {CLASSES}")


def _regular(cx: float, cy: float, r: float, angle: float, k: int) -> list:
    t = angle + 2 * np.pi * np.arange(k) / k
    return [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in t]


def _rotate(points: list, cx: float, cy: float, angle: float) -> list:
    c, s = np.cos(angle), np.sin(angle)
    return [(float(cx + c * x - s * y), float(cy + s * x + c * y)) for x, y in points]


def _tight_box(mask: np.ndarray) -> Box:
    """(x0, y0, x1, y1), exclusive ends, of the True pixels: measured, not computed
    from the shape's geometry, so it is exact whatever the rasteriser did."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear-interpolation matrix (n_out, n_in): smooth noise without scipy."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.floor(pos).astype(int).clip(0, n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


_UP = _upsample_matrix(5, SIZE)
