"""The pointing game (Zhang et al. 2016): does a map's maximum fall on the object?

The simplest localization score there is, and one that needs only a box per
image: a hit when the map's highest pixel lies inside the object's box
(optionally widened by ``tolerance`` pixels, the paper's 15 px at 224).
The demo task knows every object's exact box, so this turns "the
explanations point at the object" into a number a test can hold to.

Pure numpy: maps in, hits out.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np


def peak(map2d: np.ndarray) -> Union[tuple, None]:
    """(y, x) the map points at: its maximum; None for a flat map.

    When the maximum is a plateau (occlusion maps are piecewise constant over
    stride x stride blocks; upsampled CAMs can saturate) the map points at the
    plateau's middle, so the tied pixel nearest the plateau's centroid is
    taken (raster order breaks the remaining ties) rather than its top-left
    corner, which would sit half a block off. A flat map (an all-zero CAM)
    points nowhere and can never score a hit by the accident of its first
    pixel lying in a box.
    """
    a = np.nan_to_num(np.asarray(map2d, dtype=np.float64), nan=-np.inf)
    if a.size == 0 or not np.isfinite(a).any() or a.max() == a.min():
        return None
    tied = np.argwhere(a == a.max())
    if len(tied) == 1:
        return int(tied[0][0]), int(tied[0][1])
    dist = ((tied - tied.mean(axis=0)) ** 2).sum(axis=1)
    y, x = tied[int(np.argmin(dist))]
    return int(y), int(x)


def reduce_maps(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) as is; (N, C, H, W) input attributions -> sum over channels of |attr|."""
    a = np.asarray(maps)
    if a.ndim == 4:
        return np.abs(a).sum(axis=1)
    if a.ndim == 3:
        return a
    raise ValueError(f"expected (N, H, W) or (N, C, H, W) maps, got shape {a.shape}")


def pointing_hits(maps: np.ndarray, boxes: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """(N,) bool: the peak of map i lies in box i = (x0, y0, x1, y1), x1/y1 exclusive."""
    m = reduce_maps(maps)
    b = np.asarray(boxes)
    if b.shape != (len(m), 4):
        raise ValueError(f"need one (x0, y0, x1, y1) box per map: {len(m)} maps, boxes of shape {b.shape}")
    return point_hits([peak(one) for one in m], b, tolerance)


def _score(hits: np.ndarray) -> Dict[str, float]:
    return {"accuracy": float(hits.mean()) if len(hits) else 0.0, "hits": int(hits.sum()), "n": int(len(hits))}


def pointing_game(maps: np.ndarray, boxes: np.ndarray, tolerance: int = 0) -> Dict[str, float]:
    """Accuracy (hits / N), the hit count and N."""
    return _score(pointing_hits(maps, boxes, tolerance))


# --------------------------------------------------------------------------- occluder positions

def occluder_points(drop: np.ndarray, positions: np.ndarray,
                    window: Sequence[int]) -> Sequence[Optional[Tuple[float, float]]]:
    """Where per-position occlusion maps point: the centre of the most sensitive window.

    ``drop`` (N, nY, nX) is p(target | image) - p(target | occluded) per occluder
    position, the map Zeiler & Fergus plot; ``positions`` the windows' top-left
    (y, x) corners, row-major (``OcclusionDetails.positions``). Scoring this
    map instead of the per-pixel one avoids a bias of the per-pixel mean: a
    pixel near the image edge is covered by fewer windows, so its mean is not
    diluted by partly-covering ones and edge blocks win ties they should not.
    """
    ys = np.unique(positions[:, 0]) + (window[0] - 1) / 2.0
    xs = np.unique(positions[:, 1]) + (window[1] - 1) / 2.0
    points = []
    for grid in np.asarray(drop):
        p = peak(grid)
        points.append(None if p is None else (float(ys[p[0]]), float(xs[p[1]])))
    return points


def point_hits(points: Sequence[Optional[Tuple[float, float]]], boxes: np.ndarray,
               tolerance: float = 0) -> np.ndarray:
    """(N,) bool: point i = (y, x) lies in box i = (x0, y0, x1, y1), x1/y1 exclusive; None misses."""
    hits = np.zeros(len(points), dtype=bool)
    for i, (p, (x0, y0, x1, y1)) in enumerate(zip(points, np.asarray(boxes))):
        if p is not None:
            y, x = p
            hits[i] = (x0 - tolerance <= x < x1 + tolerance) and (y0 - tolerance <= y < y1 + tolerance)
    return hits


def occlusion_pointing_game(drop: np.ndarray, positions: np.ndarray, window: Sequence[int],
                            boxes: np.ndarray, tolerance: float = 0) -> Dict[str, float]:
    """The pointing game on the per-position occlusion map (see :func:`occluder_points`)."""
    return _score(point_hits(occluder_points(drop, positions, window), boxes, tolerance))
