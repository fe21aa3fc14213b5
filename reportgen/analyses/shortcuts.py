"""What a model relies on across a dataset: spectral relevance analysis and a transplant test.

Lapuschkin et al. (2019, "Unmasking Clever Hans predictors") cluster a class's
attribution maps (SpRAy) and look for a cluster whose maps agree on one small
place; such a cluster is only *seen*. Here a suspicion is then *proven* (or not)
by an intervention: the region's pixels, cut from that cluster's own images, are
pasted at the same place into images of the other classes, and the share that
now predict the class is compared with a control (the same-size region at the
mirrored place of the same source images) by a one-sided Fisher exact test.

Conventions:

* maps are pooled to a ``GRID`` x ``GRID`` grid (area average of |map|) and
  normalized to sum to 1: memory is one small grid per image, whatever the
  input size;
* SpRAy: a symmetric binary k-nearest-neighbour affinity on the pooled maps
  (Euclidean), the symmetric normalized Laplacian ``I - D^-1/2 A D^-1/2``, its
  smallest eigenvalues (``numpy.linalg.eigh``), ``k`` = the position of the
  largest gap among the first ``MAX_CLUSTERS + 1`` (so k <= 4), then k-means
  on the row-normalized first ``k`` eigenvectors (Ng, Jordan & Weiss 2002),
  seeded;
* a region is ``(y0, x0, y1, x1)`` in grid cells (exclusive ends) or, in
  report.json, in fractions of the input side; ``location_spread`` is the
  median distance of each map's peak cell centre from their component-wise
  median, in fractions of the input side (0: every map peaks in one cell).

Nothing here reads a spec or draws a picture; the model runs in eval mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from reportgen.analyses.agreement import top1
from reportgen.analyses.gradients import class_scores
from reportgen.model.hooks import eval_mode
from reportgen.model.images import shrink_to

GRID = 8                 # pooled map side
MAX_CLUSTERS = 4         # k <= 4 from the eigengap
MIN_SUSPECT_SIZE = 3     # a cluster of fewer maps is shown, never suspected
KMEANS_RESTARTS = 8
KMEANS_ITERATIONS = 50

Box = Tuple[int, int, int, int]


# --------------------------------------------------------------------------- maps

def pool_maps(maps: np.ndarray, grid: int = GRID) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) maps -> (N, grid, grid) float64, |values| area-averaged, each summing to 1.

    A map with no mass becomes uniform (it points nowhere in particular).
    """
    a = np.abs(np.asarray(maps, dtype=np.float64))
    if a.ndim == 4:
        a = a.sum(axis=1)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0)
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(a)[:, None], grid)[:, 0].numpy()
    total = pooled.sum(axis=(1, 2), keepdims=True)
    uniform = np.full_like(pooled, 1.0 / (grid * grid))
    return np.where(total > 0, pooled / np.where(total > 0, total, 1.0), uniform)


def normalized(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) |maps| each divided by its sum (zeros stay zeros): a mean of these is a mean distribution."""
    a = np.abs(np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0, posinf=0.0))
    total = a.sum(axis=(1, 2), keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a), where=total > 0)


# --------------------------------------------------------------------------- SpRAy

@dataclass(frozen=True)
class Spray:
    eigenvalues: np.ndarray     # smallest eigenvalues of the normalized Laplacian, ascending
    k: int                      # clusters, from the largest gap
    labels: np.ndarray          # (N,) cluster per map, 0 = the largest cluster
    neighbours: int             # k of the kNN affinity


def neighbours_for(n: int) -> int:
    """kNN affinity size: about sqrt(n), between 3 and 10 (Lapuschkin et al. use 10 at a few hundred maps)."""
    return int(max(3, min(10, round(math.sqrt(max(n, 1))))))


def knn_affinity(features: np.ndarray, k: int) -> np.ndarray:
    """(N, N) symmetric binary affinity: 1 where either point is among the other's k nearest."""
    x = np.asarray(features, dtype=np.float64)
    sq = (x * x).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    np.fill_diagonal(d2, np.inf)
    k = min(k, len(x) - 1)
    nearest = np.argsort(d2, axis=1, kind="stable")[:, :k]
    a = np.zeros_like(d2)
    a[np.arange(len(x))[:, None], nearest] = 1.0
    return np.maximum(a, a.T)


def spray(features: np.ndarray, max_clusters: int = MAX_CLUSTERS, neighbours: Optional[int] = None,
          seed: int = 0) -> Spray:
    """Spectral clustering of (N, D) features with k from the eigengap (see the module doc)."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n = len(x)
    nn = neighbours or neighbours_for(n)
    if n < max(4, nn + 1):
        return Spray(np.zeros(min(n, 1)), 1, np.zeros(n, dtype=np.int64), nn)
    a = knn_affinity(x, nn)
    inv = 1.0 / np.sqrt(a.sum(axis=1))
    lap = np.eye(n) - inv[:, None] * a * inv[None, :]
    values, vectors = np.linalg.eigh(lap)
    m = min(max_clusters + 1, n)
    ev = np.clip(values[:m], 0.0, None)
    k = int(np.argmax(np.diff(ev))) + 1 if m > 1 else 1
    if k == 1:
        return Spray(ev, 1, np.zeros(n, dtype=np.int64), nn)
    u = vectors[:, :k]
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    return Spray(ev, k, _by_size(kmeans(u, k, seed)), nn)


def kmeans(x: np.ndarray, k: int, seed: int = 0, restarts: int = KMEANS_RESTARTS,
           iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Labels of Lloyd's k-means with k-means++ seeding; the best of ``restarts`` seeded runs."""
    rng = np.random.default_rng(seed)
    best, best_cost = np.zeros(len(x), dtype=np.int64), np.inf
    for _ in range(restarts):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d = np.min(((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
            p = d / d.sum() if d.sum() > 0 else np.full(len(x), 1.0 / len(x))
            centres.append(x[rng.choice(len(x), p=p)])
        c = np.array(centres)
        for _ in range(iterations):
            labels = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(axis=1)
            new = np.array([x[labels == j].mean(axis=0) if (labels == j).any() else c[j] for j in range(k)])
            if np.allclose(new, c):
                break
            c = new
        cost = float(((x - c[labels]) ** 2).sum())
        if cost < best_cost - 1e-12:
            best, best_cost = labels, cost
    return best


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel so cluster 0 is the largest (ties: the one whose first member comes first)."""
    ids = sorted(set(labels.tolist()), key=lambda j: (-int((labels == j).sum()), int(np.argmax(labels == j))))
    remap = {old: new for new, old in enumerate(ids)}
    return np.array([remap[v] for v in labels.tolist()], dtype=np.int64)


# --------------------------------------------------------------------------- where a cluster looks

def best_region(mean_map: np.ndarray, max_area: float) -> Tuple[Box, float]:
    """The box of at most ``max_area`` (share of the grid, at least one cell) holding the most mass.

    Returns ((y0, x0, y1, x1) in cells, exclusive ends; its mass). Ties: the
    smaller box, then the first in row-major order.
    """
    m = np.asarray(mean_map, dtype=np.float64)
    gh, gw = m.shape
    cells = max(1, int(math.floor(max_area * gh * gw + 1e-9)))
    s = np.zeros((gh + 1, gw + 1))
    s[1:, 1:] = m.cumsum(0).cumsum(1)
    best: Tuple[float, int, Box] = (-1.0, 0, (0, 0, 1, 1))
    for h in range(1, gh + 1):
        for w in range(1, gw + 1):
            if h * w > cells:
                continue
            mass = s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]
            y, x = np.unravel_index(int(np.argmax(mass)), mass.shape)
            value = float(mass[y, x])
            if value > best[0] + 1e-12 or (abs(value - best[0]) <= 1e-12 and h * w < best[1]):
                best = (value, h * w, (int(y), int(x), int(y) + h, int(x) + w))
    return best[2], best[0]


def mirrored(box: Box, grid: Tuple[int, int]) -> Box:
    """The same-size box at the place point-reflected through the centre (the control region).

    A box that overlaps its mirror (one near the centre) moves instead to the
    same-size place, not overlapping it, whose centre is farthest away.
    """
    gh, gw = grid
    y0, x0, y1, x1 = box
    h, w = y1 - y0, x1 - x0
    out = (gh - y1, gw - x1, gh - y0, gw - x0)
    if not _overlap(out, box):
        return out
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    free = [(y, x, y + h, x + w) for y in range(gh - h + 1) for x in range(gw - w + 1)
            if not _overlap((y, x, y + h, x + w), box)]
    if not free:
        return out
    return max(free, key=lambda b: ((b[0] + b[2]) / 2 - cy) ** 2 + ((b[1] + b[3]) / 2 - cx) ** 2)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def peak_positions(pooled: np.ndarray) -> np.ndarray:
    """(N, 2) centre of each pooled map's largest cell, (y, x) in fractions of the input side."""
    n, gh, gw = pooled.shape
    flat = pooled.reshape(n, -1).argmax(axis=1)
    ys, xs = np.unravel_index(flat, (gh, gw))
    return np.stack([(ys + 0.5) / gh, (xs + 0.5) / gw], axis=1)


def location_spread(pooled: np.ndarray) -> float:
    """Median distance of the maps' peaks from their median place, in fractions of the side."""
    if len(pooled) == 0:
        return 0.0
    peaks = peak_positions(pooled)
    return float(np.median(np.linalg.norm(peaks - np.median(peaks, axis=0), axis=1)))


def to_fractions(box: Box, grid: Tuple[int, int]) -> Tuple[float, float, float, float]:
    gh, gw = grid
    return (box[0] / gh, box[1] / gw, box[2] / gh, box[3] / gw)


def to_pixels(box: Box, grid: Tuple[int, int], size: Tuple[int, int]) -> Box:
    """Grid cells -> input pixels (rounded; at least one pixel)."""
    (gh, gw), (h, w) = grid, size
    y0, x0 = int(round(box[0] * h / gh)), int(round(box[1] * w / gw))
    y1, x1 = max(y0 + 1, int(round(box[2] * h / gh))), max(x0 + 1, int(round(box[3] * w / gw)))
    return (y0, x0, y1, x1)


# --------------------------------------------------------------------------- the intervention

def paste(targets: torch.Tensor, sources: torch.Tensor, box: Box) -> torch.Tensor:
    """Copies of ``targets`` with ``box`` (pixels) taken from ``sources`` (cycled: target i gets source i mod S)."""
    y0, x0, y1, x1 = box
    out = targets.clone()
    idx = torch.arange(len(targets)) % len(sources)
    out[:, :, y0:y1, x0:x1] = sources[idx][:, :, y0:y1, x0:x1].to(out.dtype)
    return out


def predict(model: torch.nn.Module, images: torch.Tensor, output_key=None, batch_size: int = 64) -> np.ndarray:
    """Top-1 class of each image, in batches, without gradients."""
    out: List[np.ndarray] = []
    with eval_mode(model), torch.no_grad():
        for lo in range(0, len(images), batch_size):
            out.append(top1(class_scores(model, images[lo:lo + batch_size], output_key)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def flips(model: torch.nn.Module, targets: torch.Tensor, sources: torch.Tensor, box: Box, cls: int,
          output_key=None, batch_size: int = 64) -> int:
    """How many of ``targets`` predict ``cls`` once ``box`` is pasted from ``sources``."""
    count = 0
    for lo in range(0, len(targets), batch_size):
        part = targets[lo:lo + batch_size]
        shift = torch.arange(lo, lo + len(part)) % len(sources)
        pasted = paste(part, sources[shift], box)
        count += int((predict(model, pasted, output_key, batch_size) == cls).sum())
    return count


# --------------------------------------------------------------------------- statistics

def fisher_greater(a: int, n1: int, b: int, n2: int) -> float:
    """One-sided Fisher exact p: P(at least ``a`` of ``n1`` successes) given a + b successes in n1 + n2.

    The alternative is that the first group's rate is greater (here: the
    transplant flips more than the control). Exact, with integer binomials.
    """
    if n1 <= 0 or n2 <= 0:
        return 1.0
    total, n = a + b, n1 + n2
    denom = math.comb(n, n1)
    hi = min(total, n1)
    num = sum(math.comb(total, x) * math.comb(n - total, n1 - x) for x in range(a, hi + 1))
    return float(min(1.0, num / denom))


# --------------------------------------------------------------------------- one pass over a class

Attribute = Callable[[torch.Tensor, List[int]], np.ndarray]


@dataclass(frozen=True)
class ClassMaps:
    """What one pass over a class's images keeps: small grids, one full-size mean, thumbnails."""

    pooled: np.ndarray          # (N, GRID, GRID), each summing to 1
    mean_map: np.ndarray        # (H, W) mean of the sum-to-1 maps (a distribution)
    border_share: np.ndarray    # (N,) share of each map's mass in the border band
    thumbs: np.ndarray          # (N, h, w, 3) uint8 display thumbnails
    thumb_maps: np.ndarray      # (N, h, w) float16 maps at thumbnail size, each scaled to [0, 1]


def class_maps(load: Callable[[int], Tuple[torch.Tensor, np.ndarray]], indices: Sequence[int], cls: int,
               attribute: Attribute, border_band: float, grid: int = GRID, thumb: int = 64,
               batch_size: int = 32) -> ClassMaps:
    """Attribution maps of ``indices`` (loaded by ``load(i) -> (tensor, display)``) for class ``cls``."""
    from reportgen.analyses.faithfulness import border_concentration

    pooled, border, thumbs, tmaps = [], [], [], []
    total: Optional[np.ndarray] = None
    for lo in range(0, len(indices), batch_size):
        loaded = [load(int(i)) for i in indices[lo:lo + batch_size]]
        x = torch.stack([t for t, _ in loaded])
        maps = np.abs(np.asarray(attribute(x, [cls] * len(x)), dtype=np.float64))
        if maps.ndim == 4:
            maps = maps.sum(axis=1)
        pooled.append(pool_maps(maps, grid))
        border.append(np.atleast_1d(border_concentration(maps, border_band)))
        part = normalized(maps).sum(axis=0)
        total = part if total is None else total + part
        for (_, display), m in zip(loaded, maps):
            small = shrink_to(display, thumb)
            thumbs.append(small)
            tmaps.append(_scaled(F.adaptive_avg_pool2d(torch.from_numpy(m)[None, None], small.shape[:2])[0, 0]
                                 .numpy()).astype(np.float16))
    n = max(len(indices), 1)
    return ClassMaps(np.concatenate(pooled) if pooled else np.zeros((0, grid, grid)),
                     (total / n) if total is not None else np.zeros((1, 1)),
                     np.concatenate(border) if border else np.zeros(0),
                     np.stack(thumbs) if thumbs else np.zeros((0, 1, 1, 3), np.uint8),
                     np.stack(tmaps) if tmaps else np.zeros((0, 1, 1), np.float16))


def _scaled(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


# --------------------------------------------------------------------------- one class, end to end

@dataclass(frozen=True)
class Cluster:
    """One SpRAy cluster of a class: where its maps agree, and what moving that place does."""

    members: np.ndarray         # positions in the class's image list
    region: Box                 # grid cells where the cluster's mean map concentrates
    mass_in_region: float
    location_spread: float
    control: Box                # the same-size region at the mirrored place
    transplanted: int           # other-class images the region was pasted into
    transplant_flips: int       # ... that then predict the class
    control_flips: int          # ... that predict it with the control region pasted instead
    p_value: float              # one-sided Fisher exact, transplant > control
    mean_map: np.ndarray        # (GRID, GRID) mean of the members' pooled maps
    mean_image: np.ndarray      # (h, w, 3) uint8 mean of the members' thumbnails
    strip: np.ndarray           # (S, h, w, 3) uint8 the first members' thumbnails
    strip_maps: np.ndarray      # (S, h, w) their maps, each scaled to [0, 1]

    @property
    def transplant_flip_rate(self) -> float:
        return self.transplant_flips / self.transplanted if self.transplanted else 0.0

    @property
    def control_flip_rate(self) -> float:
        return self.control_flips / self.transplanted if self.transplanted else 0.0


@dataclass(frozen=True)
class ClassAudit:
    index: int                  # the class
    images: np.ndarray          # dataset indices whose maps were computed
    spray: Spray
    clusters: Tuple[Cluster, ...]
    mean_map: np.ndarray        # (H, W) the class's mean (sum-to-1) map
    mean_image: np.ndarray      # (h, w, 3) uint8 mean thumbnail
    border_share: np.ndarray    # (N,) per image
    candidates: int             # other-class images drawn for transplants
    already: int                # ... of which the model already predicted the class (left out)


def audit_class(model: torch.nn.Module, load: Callable[[int], Tuple[torch.Tensor, np.ndarray]],
                indices: Sequence[int], others: Sequence[int], cls: int, attribute: Attribute, *,
                region_area: float, border_band: float, device: torch.device, output_key=None,
                grid: int = GRID, thumb: int = 64, strip: int = 6, seed: int = 0,
                batch_size: int = 32) -> ClassAudit:
    """Maps of ``indices`` for ``cls``, their SpRAy clusters, and each cluster's transplant test.

    ``others`` are images of the other classes (at most the transplant budget);
    those the model already assigns to ``cls`` are left out, so a flip is a
    change the pasted pixels caused.
    """
    maps = class_maps(load, indices, cls, attribute, border_band, grid, thumb, batch_size)
    sp = spray(maps.pooled.reshape(len(maps.pooled), -1), seed=seed)
    targets = _stack(load, others, device)
    if len(targets):
        keep = predict(model, targets, output_key, batch_size) != cls
        targets = targets[torch.from_numpy(keep).to(targets.device)]
    clusters = []
    for j in range(sp.k):
        members = np.nonzero(sp.labels == j)[0]
        mean = maps.pooled[members].mean(axis=0)
        box, mass = best_region(mean, region_area)
        control = mirrored(box, mean.shape)
        sources = _stack(load, [indices[i] for i in members[:max(len(targets), 1)]], device)
        size = tuple(targets.shape[-2:]) if len(targets) else tuple(sources.shape[-2:])
        t = c = 0
        if len(targets):
            t = flips(model, targets, sources, to_pixels(box, mean.shape, size), cls, output_key, batch_size)
            c = flips(model, targets, sources, to_pixels(control, mean.shape, size), cls, output_key, batch_size)
        shown = members[:strip]
        clusters.append(Cluster(
            members=members, region=box, mass_in_region=float(mass),
            location_spread=location_spread(maps.pooled[members]), control=control,
            transplanted=int(len(targets)), transplant_flips=int(t), control_flips=int(c),
            p_value=fisher_greater(t, len(targets), c, len(targets)), mean_map=mean,
            mean_image=maps.thumbs[members].mean(axis=0).round().astype(np.uint8),
            strip=maps.thumbs[shown], strip_maps=maps.thumb_maps[shown]))
    return ClassAudit(cls, np.asarray(indices, dtype=np.int64), sp, tuple(clusters), maps.mean_map,
                      maps.thumbs.mean(axis=0).round().astype(np.uint8) if len(maps.thumbs) else maps.thumbs,
                      maps.border_share, len(others), int(len(others) - len(targets)))


def _stack(load: Callable[[int], Tuple[torch.Tensor, np.ndarray]], indices: Sequence[int],
           device: torch.device) -> torch.Tensor:
    if not len(indices):
        return torch.zeros(0)
    return torch.stack([load(int(i))[0] for i in indices]).to(device)


def spread_pick(items: Sequence[int], n: int) -> List[int]:
    """At most ``n`` of ``items``, evenly spaced over the list (deterministic; all when n >= len)."""
    items = list(items)
    if len(items) <= n:
        return items
    return [items[int(i)] for i in np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))]
