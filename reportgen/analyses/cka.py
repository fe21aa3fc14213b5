"""Linear CKA between two models' layers on the same images, streamed over a dataset.

Centered kernel alignment (Kornblith et al. 2019) compares two representations
of the same n images, X (n x p) and Y (n x q), through their n x n Gram
matrices K = X X^T and L = Y Y^T::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

It is invariant to orthogonal transforms and isotropic scaling of either
side (so to a permutation of channels), not to arbitrary invertible maps.

**Two estimators, both reported** (``CKAResult.biased`` / ``.debiased``):

* *biased* (Kornblith et al. 2019, Gretton et al. 2005):
  HSIC_b = tr(K H L H) / (n-1)^2 = ||Xc^T Yc||_F^2 / (n-1)^2 with Xc, Yc the
  column-centered features, so CKA_b = ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F).
  With many features per image and few images it is biased towards 1:
  unrelated representations can score far above 0.
* *debiased* (the unbiased HSIC of Song et al. 2012, as used for CKA by
  Nguyen et al. 2021): with K~, L~ the Gram matrices with zeroed diagonals,
  HSIC_u = [tr(K~L~) + 1^T K~ 1 * 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)).
  Needs n >= 4; it can fall slightly below 0 for unrelated representations.

The headline value (``CKAResult.cka``) is the debiased one by default
(``estimator="debiased"``): a layer gives up to ``max_features`` features and a
report's dataset may hold a few hundred images, exactly where the biased
estimator misleads. Below 4 images it falls back to the biased one and says so.

**Streaming, exactly.** Both estimators are computed over the *whole* dataset,
not averaged over minibatches (Nguyen et al.'s "minibatch CKA" depends on the
batch size; this does not). Every term above is a polynomial in per-image
sums, so the pass keeps, per representation, n, sum x, X^T X, sum a, sum a^2,
sum a x (a = ||x||^2), and per compared pair X^T Y, sum b x, sum a y, sum a b:
tr(K~L~) = ||X^T Y||_F^2 - sum a b, 1^T K~ 1 = ||sum x||^2 - sum a and
1^T K~ L~ 1 = (sum x)^T X^T Y (sum y) - (sum x).(sum b x) - (sum y).(sum a y) + sum a b.
Memory is O(p^2 + q^2 + pq) per layer pair, flat in the dataset size; the
debiased estimator needs no n x n Gram matrix. The sums are float64 and taken
around a *shift* (the first batch's mean) so the raw second and fourth moments
do not cancel catastrophically; both estimators are shift invariant, and
merging two states re-expresses one in the other's shift exactly (``merge``),
so shards combine to the one-process result (up to float64 rounding).

**Feature reduction** (``Reduction``; stated per layer in the result). A conv
map flattened per image is far too wide for p x p sums (ResNet layer1 at 224^2:
200k values), so each (C, H, W) output is average-pooled to a ``grid`` x
``grid`` map per channel (adaptive average pooling, bins as in PyTorch) and
flattened, p = C * grid^2: some spatial layout survives (global pooling,
``grid=1``, cannot tell a detector in the top-left from one in the
bottom-right) and a channel permutation is still a permutation of features.
The grid shrinks for wide layers so p <= ``max_features`` (default 2x2, at most
4096 features: ResNet-50's stages give 1024, 2048, 4096 and 2048); never
beyond the map's own size. ``grid="full"`` flattens the map unpooled (small
maps only). (N, D) outputs (linear layers) are used as they are. Pooling is
linear, so this is the CKA of a coarser view of the map: differences finer
than the grid (where inside a cell a feature fires) are not seen. A module
called several times contributes its last call, as ``ActivationRecorder``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.analyses.topk import make_loader
from reportgen.model.hooks import eval_mode, hook_layers
from reportgen.model.loading import model_device

DEFAULT_GRID = 2
DEFAULT_MAX_FEATURES = 4096
DEFAULT_MAX_STATE_BYTES = 2 << 30   # the sums of one pass; a wider plan is refused, not swapped
ESTIMATORS = ("debiased", "biased")
MIN_IMAGES = {"biased": 2, "debiased": 4}

Grid = Union[int, str]
Features = Union[torch.Tensor, np.ndarray]
Progress = Callable[..., Iterable]


# --------------------------------------------------------------------------- reduction

@dataclass(frozen=True)
class Reduction:
    """How one layer's output becomes a feature vector per image."""

    layer: str
    shape: Tuple[int, ...]               # the layer's output per image: (C, H, W) or (D,)
    grid: Optional[Tuple[int, int]]      # pooled (h, w) per channel; None for (N, D) outputs
    features: int                        # p, the feature vector's length

    def describe(self) -> str:
        if self.grid is None:
            return f"the layer's {self.features} outputs as they are"
        if self.grid == tuple(self.shape[1:]):
            return f"the whole {self.shape[1]}x{self.shape[2]} map, unpooled ({self.features} features)"
        return (f"average-pooled to {self.grid[0]}x{self.grid[1]} per channel "
                f"({self.shape[0]} x {self.grid[0] * self.grid[1]} = {self.features} features)")


def plan_reduction(layer: str, shape: Sequence[int], grid: Grid = DEFAULT_GRID,
                   max_features: int = DEFAULT_MAX_FEATURES) -> Reduction:
    """The reduction of an output of per-image ``shape``: see the module docstring.

    ValueError when even global pooling gives more than ``max_features``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        if shape[0] > max_features:
            raise ValueError(f"layer {layer!r} has {shape[0]} outputs, more than max_features="
                             f"{max_features}; raise max_features or pick another layer")
        return Reduction(layer, shape, None, shape[0])
    if len(shape) != 3:
        raise ValueError(f"layer {layer!r} gives outputs of shape (N, {', '.join(map(str, shape))}); "
                         "CKA takes (N, C, H, W) feature maps or (N, D) vectors")
    c, h, w = shape
    if grid == "full":
        if c * h * w > max_features:
            raise ValueError(f"layer {layer!r}: the unpooled map has {c * h * w} features, more than "
                             f"max_features={max_features}; use a pooling grid")
        return Reduction(layer, shape, (h, w), c * h * w)
    if not isinstance(grid, (int, np.integer)) or isinstance(grid, bool) or grid < 1:
        raise ValueError(f"grid must be a positive int or 'full', not {grid!r}")
    g = min(int(grid), math.isqrt(max_features // c)) if c <= max_features else 0
    if g < 1:
        raise ValueError(f"layer {layer!r} has {c} channels, more than max_features={max_features} "
                         "even when globally pooled; raise max_features or pick another layer")
    gh, gw = min(g, h), min(g, w)
    return Reduction(layer, shape, (gh, gw), c * gh * gw)


def reduce_features(out: torch.Tensor, plan: Reduction) -> torch.Tensor:
    """(B, p) float64 features of a batch of layer outputs, as ``plan`` says.

    Always a copy, never a view of ``out``: an in-place op later in the model
    (ReLU(inplace=True) after a recorded conv) must not reach the features.
    """
    out = out.detach()
    if plan.grid is not None and tuple(out.shape[2:]) != plan.grid:
        out = F.adaptive_avg_pool2d(out.float(), plan.grid)
    return out.reshape(out.shape[0], -1).to(torch.float64, copy=True)


# --------------------------------------------------------------------------- moments

def _zeros(*shape: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float64, device=device)


class _Side:
    """Sums over the images of one representation, in coordinates x' = x - shift.

    ``s`` = sum x', ``g`` = X'^T X', ``a`` = sum ||x'||^2, ``a2`` = sum ||x'||^4,
    ``u`` = sum ||x'||^2 x'.
    """

    FIELDS = ("shift", "s", "g", "a", "a2", "u")

    def __init__(self, p: int, device: torch.device):
        self.n = 0
        self.shift, self.s, self.u = (_zeros(p, device=device) for _ in range(3))
        self.g = _zeros(p, p, device=device)
        self.a, self.a2 = _zeros(device=device), _zeros(device=device)

    @property
    def p(self) -> int:
        return int(self.s.shape[0])

    def update(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add a batch (B, p) float64; returns (shifted batch, squared norms) for the pairs."""
        if self.n == 0:
            self.shift = x.mean(dim=0)
        xs = x - self.shift
        sq = (xs * xs).sum(dim=1)
        self.n += int(x.shape[0])
        self.s += xs.sum(dim=0)
        self.g += xs.T @ xs
        self.a += sq.sum()
        self.a2 += (sq * sq).sum()
        self.u += xs.T @ sq
        return xs, sq

    def as_cross(self) -> "_Cross":
        """This side paired with itself: X^T X, sum a x, sum a x, sum a^2."""
        return _Cross.of(self.g, self.u, self.u, self.a2)

    def shifted(self, d: torch.Tensor) -> "_Side":
        """The same sums in coordinates x' - d (i.e. around shift + d)."""
        out = _Side.__new__(_Side)
        out.n = self.n
        moved = _shift_cross(self.as_cross(), self, self, d, d)
        out.shift = self.shift + d
        out.s = self.s - self.n * d
        out.a = self.a - 2 * (d @ self.s) + self.n * (d @ d)
        out.g, out.u, out.a2 = moved.c, moved.pb, moved.r
        return out

    def add(self, other: "_Side") -> None:
        """Add sums already in this side's coordinates."""
        self.n += other.n
        for f in ("s", "g", "a", "a2", "u"):
            getattr(self, f).add_(getattr(other, f).to(self.s.device))

    def tensors(self) -> List[torch.Tensor]:
        return [self.s, self.g, self.a, self.a2, self.u]


class _Cross:
    """Sums over the images of a pair: ``c`` = X'^T Y', ``pb`` = sum ||y'||^2 x',
    ``qa`` = sum ||x'||^2 y', ``r`` = sum ||x'||^2 ||y'||^2."""

    def __init__(self, p: int, q: int, device: torch.device):
        self.c = _zeros(p, q, device=device)
        self.pb, self.qa = _zeros(p, device=device), _zeros(q, device=device)
        self.r = _zeros(device=device)

    @classmethod
    def of(cls, c, pb, qa, r) -> "_Cross":
        out = cls.__new__(cls)
        out.c, out.pb, out.qa, out.r = c, pb, qa, r
        return out

    def update(self, xs: torch.Tensor, a: torch.Tensor, ys: torch.Tensor, b: torch.Tensor) -> None:
        self.c += xs.T @ ys
        self.pb += xs.T @ b
        self.qa += ys.T @ a
        self.r += (a * b).sum()

    def add(self, other: "_Cross") -> None:
        for f in ("c", "pb", "qa", "r"):
            getattr(self, f).add_(getattr(other, f).to(self.c.device))

    def tensors(self) -> List[torch.Tensor]:
        return [self.c, self.pb, self.qa, self.r]


def _shift_cross(cr: _Cross, x: _Side, y: _Side, d: torch.Tensor, e: torch.Tensor) -> _Cross:
    """Pair sums re-expressed for x' - d and y' - e, from the old sums alone (exact algebra).

    With a_i' = a_i - 2 d.x_i + |d|^2 and b_i' likewise, expanding each sum
    gives terms the state already holds.
    """
    n, S, T, A, B = x.n, x.s, y.s, x.a, y.a
    C, P, Q, R = cr.c, cr.pb, cr.qa, cr.r
    dd, ee, dS, eT = d @ d, e @ e, d @ S, e @ T
    c = C - torch.outer(S, e) - torch.outer(d, T) + n * torch.outer(d, e)
    pb = P - B * d - 2 * (C @ e) + 2 * eT * d + ee * S - n * ee * d
    qa = Q - A * e - 2 * (C.T @ d) + 2 * dS * e + dd * T - n * dd * e
    r = (R - 2 * (e @ Q) + ee * A - 2 * (d @ P) + 4 * (d @ C @ e) - 2 * ee * dS + dd * B
         - 2 * dd * eT + n * dd * ee)
    return _Cross.of(c, pb, qa, r)


def _hsic(x: _Side, y: _Side, xy: _Cross) -> Tuple[float, float]:
    """(biased HSIC, unbiased HSIC) of the pair; NaN where n is too small."""
    n = x.n
    if n < MIN_IMAGES["biased"]:
        return math.nan, math.nan
    centered = xy.c - torch.outer(x.s, y.s) / n
    biased = float((centered * centered).sum()) / (n - 1) ** 2
    if n < MIN_IMAGES["debiased"]:
        return biased, math.nan
    trace = (xy.c * xy.c).sum() - xy.r
    kk, ll = x.s @ x.s - x.a, y.s @ y.s - y.a
    kl = x.s @ xy.c @ y.s - x.s @ xy.pb - y.s @ xy.qa + xy.r
    unbiased = (trace + kk * ll / ((n - 1) * (n - 2)) - 2 * kl / (n - 2)) / (n * (n - 3))
    return biased, float(unbiased)


def _ratio(xy: float, xx: float, yy: float) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)); NaN when a side has no (estimated) variance."""
    if not (xx > 0 and yy > 0) or math.isnan(xy):
        return math.nan
    return xy / math.sqrt(xx * yy)


def state_bytes(x_features: Sequence[int], y_features: Sequence[int],
                pairs: Iterable[Tuple[int, int]]) -> int:
    """Bytes of the float64 sums for these feature widths and compared pairs."""
    side = sum(p * p + 3 * p + 2 for p in list(x_features) + list(y_features))
    cross = sum(x_features[i] * y_features[j] + x_features[i] + y_features[j] + 1 for i, j in pairs)
    return 8 * (side + cross)


@dataclass(frozen=True)
class CKAValue:
    """One pair's CKA under both estimators, and the HSIC terms behind them."""

    biased: float
    debiased: float               # NaN below 4 images or with no estimated variance
    n: int
    hsic_biased: Tuple[float, float, float]     # HSIC(K, L), HSIC(K, K), HSIC(L, L)
    hsic_debiased: Tuple[float, float, float]


class CKAMatrixAccumulator:
    """Streaming linear CKA between layers of X (base) and layers of Y (new).

    ``pairs`` lists the compared (i, j) = (x layer, y layer); None compares
    every x layer with every y layer (a cross matrix). Per layer, the sums of
    its own side are kept once, however many pairs use it. Features are
    given per batch as (B, p) rows (anything else is flattened per row).
    """

    def __init__(self, x_layers: int, y_layers: int,
                 pairs: Optional[Iterable[Tuple[int, int]]] = None,
                 device: Union[str, torch.device] = "cpu"):
        self.x_layers, self.y_layers = int(x_layers), int(y_layers)
        self.pairs: List[Tuple[int, int]] = sorted(
            {(int(i), int(j)) for i, j in pairs} if pairs is not None
            else {(i, j) for i in range(self.x_layers) for j in range(self.y_layers)})
        if self.x_layers < 1 or self.y_layers < 1:
            raise ValueError("CKA needs at least one layer on each side")
        bad = [(i, j) for i, j in self.pairs if not (0 <= i < self.x_layers and 0 <= j < self.y_layers)]
        if bad:
            raise ValueError(f"pair {bad[0]} is out of range for {self.x_layers} x {self.y_layers} layers")
        self.device = torch.device(device)
        self.xs: List[_Side] = []       # per layer, once the widths are known
        self.ys: List[_Side] = []
        self.cross: Dict[Tuple[int, int], _Cross] = {}

    @property
    def n(self) -> int:
        return self.xs[0].n if self.xs else 0

    @property
    def allocated(self) -> bool:
        return bool(self.xs)

    def allocate(self, x_features: Sequence[int], y_features: Sequence[int]) -> None:
        """Create empty sums for these widths (done by the first ``update`` otherwise)."""
        if len(x_features) != self.x_layers or len(y_features) != self.y_layers:
            raise ValueError(f"expected {self.x_layers} x and {self.y_layers} y feature sets, "
                             f"got {len(x_features)} and {len(y_features)}")
        self.xs = [_Side(int(p), self.device) for p in x_features]
        self.ys = [_Side(int(q), self.device) for q in y_features]
        self.cross = {(i, j): _Cross(int(x_features[i]), int(y_features[j]), self.device)
                      for i, j in self.pairs}

    def widths(self) -> Tuple[List[int], List[int]]:
        return [s.p for s in self.xs], [s.p for s in self.ys]

    def nbytes(self) -> int:
        return state_bytes(*self.widths(), self.pairs) if self.allocated else 0

    def update(self, x_feats: Sequence[Features], y_feats: Sequence[Features]) -> None:
        """Add one batch: ``x_feats[i]`` (B, p_i) for each x layer, ``y_feats[j]`` (B, q_j)."""
        xb = [self._rows(f) for f in x_feats]
        yb = [self._rows(f) for f in y_feats]
        sizes = {int(t.shape[0]) for t in xb + yb}
        if len(sizes) != 1:
            raise ValueError("every feature set of a batch needs the same number of rows, "
                             f"got {sorted(sizes)}")
        got = ([int(t.shape[1]) for t in xb], [int(t.shape[1]) for t in yb])
        if not self.allocated:
            self.allocate(*got)
        elif got != self.widths():
            raise ValueError(f"feature widths changed between batches: {self.widths()} before, {got} now")
        if sizes == {0}:
            return
        xu = [side.update(t) for side, t in zip(self.xs, xb)]
        yu = [side.update(t) for side, t in zip(self.ys, yb)]
        for (i, j), cr in self.cross.items():
            cr.update(*xu[i], *yu[j])

    def merge(self, other: "CKAMatrixAccumulator") -> None:
        """Add another state (a shard) over *other* images: exactly one pass over both."""
        if (other.x_layers, other.y_layers, other.pairs) != (self.x_layers, self.y_layers, self.pairs):
            raise ValueError("cannot merge CKA states of different layers or pairs")
        if other.n == 0:
            return
        if self.n == 0:
            if not self.allocated:
                self.allocate(*other.widths())
            self.rebase([s.shift for s in other.xs], [s.shift for s in other.ys])
        if self.widths() != other.widths():
            raise ValueError(f"cannot merge CKA states of feature widths {self.widths()} "
                             f"and {other.widths()}")
        self._add(other.rebased([s.shift for s in self.xs], [s.shift for s in self.ys]))

    def rebased(self, x_shifts: Sequence[torch.Tensor],
                y_shifts: Sequence[torch.Tensor]) -> "CKAMatrixAccumulator":
        """A copy whose sums are taken around the given shifts (same estimates, other rounding)."""
        out = CKAMatrixAccumulator(self.x_layers, self.y_layers, self.pairs, self.device)
        dx = [torch.as_tensor(t, dtype=torch.float64, device=self.device) - s.shift
              for s, t in zip(self.xs, x_shifts)]
        dy = [torch.as_tensor(t, dtype=torch.float64, device=self.device) - s.shift
              for s, t in zip(self.ys, y_shifts)]
        out.cross = {(i, j): _shift_cross(cr, self.xs[i], self.ys[j], dx[i], dy[j])
                     for (i, j), cr in self.cross.items()}
        out.xs = [s.shifted(d) for s, d in zip(self.xs, dx)]
        out.ys = [s.shifted(d) for s, d in zip(self.ys, dy)]
        return out

    def rebase(self, x_shifts: Sequence[torch.Tensor], y_shifts: Sequence[torch.Tensor]) -> None:
        """Re-express this state around the given shifts, in place."""
        moved = self.rebased(x_shifts, y_shifts)
        self.xs, self.ys, self.cross = moved.xs, moved.ys, moved.cross

    def tensors(self) -> List[torch.Tensor]:
        """Every sum, in a fixed order: what a distributed all-reduce adds up (shifts excluded)."""
        out: List[torch.Tensor] = []
        for side in self.xs + self.ys:
            out += side.tensors()
        for key in self.pairs:
            out += self.cross[key].tensors()
        return out

    def set_count(self, n: int) -> None:
        """The image count after an all-reduce of ``tensors()``."""
        for side in self.xs + self.ys:
            side.n = int(n)

    def value(self, i: int, j: int) -> CKAValue:
        """CKA of x layer ``i`` and y layer ``j`` (a compared pair) over everything seen."""
        if (i, j) not in self.pairs:
            raise ValueError(f"pair ({i}, {j}) is not compared by this accumulator")
        if not self.allocated:
            nan3 = (math.nan,) * 3
            return CKAValue(math.nan, math.nan, 0, nan3, nan3)
        x, y = self.xs[i], self.ys[j]
        hb, hu = zip(_hsic(x, y, self.cross[(i, j)]), _hsic(x, x, x.as_cross()), _hsic(y, y, y.as_cross()))
        return CKAValue(_ratio(*hb), _ratio(*hu), x.n, tuple(hb), tuple(hu))

    def feature_moments(self, i: int, j: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per feature f of a compared pair with equal widths: (cov(x_f, y_f), var(x_f), var(y_f))
        over the images seen, each (p,) float64 sums of centered products (not divided by n).

        The diagonal of the centered cross sums, read off the same state (so it shards
        and merges like the CKA itself): what a per-channel correlation needs.
        """
        if (i, j) not in self.pairs:
            raise ValueError(f"pair ({i}, {j}) is not compared by this accumulator")
        x, y, xy = self.xs[i], self.ys[j], self.cross[(i, j)]
        if x.p != y.p:
            raise ValueError(f"feature widths differ ({x.p} vs {y.p}): features have no counterpart")
        n = max(x.n, 1)
        cov = torch.diagonal(xy.c) - x.s * y.s / n
        vx = torch.diagonal(x.g) - x.s * x.s / n
        vy = torch.diagonal(y.g) - y.s * y.s / n
        return tuple(t.cpu().numpy() for t in (cov, vx, vy))  # type: ignore[return-value]

    def matrices(self) -> Tuple[np.ndarray, np.ndarray]:
        """(biased, debiased) CKA, each (x layers, y layers); NaN for pairs not compared."""
        biased = np.full((self.x_layers, self.y_layers), np.nan)
        debiased = biased.copy()
        for i, j in self.pairs:
            v = self.value(i, j)
            biased[i, j], debiased[i, j] = v.biased, v.debiased
        return biased, debiased

    def _add(self, other: "CKAMatrixAccumulator") -> None:
        for mine, theirs in zip(self.xs + self.ys, other.xs + other.ys):
            mine.add(theirs)
        for key, cr in self.cross.items():
            cr.add(other.cross[key])

    def _rows(self, f: Features) -> torch.Tensor:
        t = torch.as_tensor(f).detach()
        return t.reshape(t.shape[0], -1).to(device=self.device, dtype=torch.float64)


class CKAAccumulator:
    """Streaming linear CKA of one pair of representations: ``update(x, y)`` per batch.

    ``x`` (B, p) and ``y`` (B, q) hold the same B images' features, row for
    row; ``merge`` adds a shard seen by another accumulator; ``value`` gives
    both estimators over every image seen.
    """

    def __init__(self, device: Union[str, torch.device] = "cpu"):
        self.state = CKAMatrixAccumulator(1, 1, device=device)

    @property
    def n(self) -> int:
        return self.state.n

    def update(self, x_feats: Features, y_feats: Features) -> None:
        self.state.update([x_feats], [y_feats])

    def merge(self, other: "CKAAccumulator") -> None:
        self.state.merge(other.state)

    def value(self) -> CKAValue:
        return self.state.value(0, 0)


# --------------------------------------------------------------------------- hooks

class LayerFeatures:
    """Forward hooks reducing named layers' outputs to (B, p) features as the model runs.

    A context manager (eval mode and hooks inside, both undone after, even on
    an error). Each map is pooled inside its hook, so no full map outlives
    its forward step, and an in-place op later in the model (ReLU(inplace)
    after a recorded conv) cannot change what was recorded, which a kept
    ``ActivationRecorder`` output would suffer.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], grid: Grid = DEFAULT_GRID,
                 max_features: int = DEFAULT_MAX_FEATURES):
        self.model, self.layers = model, list(layers)
        self.grid, self.max_features = grid, int(max_features)
        self.plans: Dict[str, Reduction] = {}
        self._batch: Dict[str, torch.Tensor] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "LayerFeatures":
        self._stack.enter_context(eval_mode(self.model))
        hook_layers(self._stack, self.model, self.layers, self._reducer)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def clear(self) -> None:
        self._batch.clear()

    def take(self) -> List[torch.Tensor]:
        """The last forward's features, one (B, p) per layer in ``layers`` order."""
        missing = [n for n in self.layers if n not in self._batch]
        if missing:
            raise ValueError(f"layer {missing[0]!r} was not called during the forward pass")
        out = [self._batch[n] for n in self.layers]
        self._batch.clear()
        return out

    def _reducer(self, name: str) -> Callable:
        def fn(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not torch.is_tensor(out):
                raise ValueError(f"layer {name!r} returned {type(out).__name__}, not a tensor")
            shape = tuple(int(v) for v in out.shape[1:])
            plan = self.plans.get(name)
            if plan is None or plan.shape != shape:
                if plan is not None:
                    raise ValueError(f"layer {name!r} changed its output shape from {plan.shape} to "
                                     f"{shape}; CKA needs one feature size per layer")
                plan = self.plans[name] = plan_reduction(name, shape, self.grid, self.max_features)
            self._batch[name] = reduce_features(out, plan)
        return fn


# --------------------------------------------------------------------------- the pass

@dataclass(frozen=True)
class CKAResult:
    """CKA between ``base_layers`` (rows) and ``new_layers`` (columns) over ``n`` images.

    ``mode`` "pairs": row i is compared with column i only (same architecture);
    "matrix": every row with every column. Entries not compared, or undefined
    (a layer without variance, too few images), are NaN.
    """

    base_layers: Tuple[str, ...]
    new_layers: Tuple[str, ...]
    mode: str                              # "pairs" | "matrix"
    n: int                                 # images seen
    biased: np.ndarray                     # (Lb, Ln) float64, Kornblith et al. 2019
    debiased: np.ndarray                   # (Lb, Ln) float64, unbiased HSIC (Song et al. 2012)
    estimator: str                         # the one ``cka`` holds: "debiased" | "biased"
    estimator_note: Optional[str]          # why it differs from the one asked for, if it does
    base_reduction: Tuple[Reduction, ...]  # per row layer
    new_reduction: Tuple[Reduction, ...]   # per column layer

    @property
    def cka(self) -> np.ndarray:
        """The headline values: ``debiased`` or ``biased``, as ``estimator`` says."""
        return self.debiased if self.estimator == "debiased" else self.biased

    def layer_values(self) -> Dict[str, Optional[float]]:
        """Pairs mode: base layer name -> headline CKA (None where undefined)."""
        if self.mode != "pairs":
            raise ValueError("layer_values() is for compared pairs; a cross matrix has no diagonal")
        return {name: _float_or_none(self.cka[i, i]) for i, name in enumerate(self.base_layers)}

    def meta(self) -> Dict[str, Any]:
        """What report.json should say about how the numbers were made."""
        return {
            "estimator": self.estimator,
            "estimator_note": self.estimator_note,
            "estimators": {
                "biased": "linear CKA, HSIC = ||Xc^T Yc||_F^2 / (n-1)^2 (Kornblith et al. 2019)",
                "debiased": "linear CKA on the unbiased HSIC estimator (Song et al. 2012; "
                            "Nguyen et al. 2021), over all images (not minibatch-averaged)",
            },
            "n": self.n, "mode": self.mode,
            "reduction": {
                "base": {r.layer: {"features": r.features, "grid": list(r.grid) if r.grid else None,
                                   "how": r.describe()} for r in self.base_reduction},
                "new": {r.layer: {"features": r.features, "grid": list(r.grid) if r.grid else None,
                                  "how": r.describe()} for r in self.new_reduction},
            },
        }


def _float_or_none(v: float) -> Optional[float]:
    return None if not np.isfinite(v) else float(v)


def _pairs_for(mode: str, nb: int, nn_: int) -> Optional[List[Tuple[int, int]]]:
    if mode == "pairs":
        if nb != nn_:
            raise ValueError(f"pairs mode compares layer i with layer i: {nb} base layers, {nn_} new layers")
        return [(i, i) for i in range(nb)]
    if mode == "matrix":
        return None
    raise ValueError(f"unknown CKA mode {mode!r}; valid: pairs, matrix")


class CKAPass:
    """Both models hooked, their features fed to one accumulator; ``step`` runs one batch.

    A context manager over both models. ``step`` returns both models' raw
    outputs so a caller can compare predictions on the same forward.
    """

    def __init__(self, base: nn.Module, new: nn.Module, base_layers: Sequence[str],
                 new_layers: Sequence[str], mode: str = "pairs", grid: Grid = DEFAULT_GRID,
                 max_features: int = DEFAULT_MAX_FEATURES, device: Union[str, torch.device] = "cpu",
                 max_state_bytes: int = DEFAULT_MAX_STATE_BYTES):
        self.base, self.new = base, new
        self.base_layers, self.new_layers, self.mode = tuple(base_layers), tuple(new_layers), mode
        self.device = torch.device(device)
        self.max_state_bytes = int(max_state_bytes)
        pairs = _pairs_for(mode, len(self.base_layers), len(self.new_layers))
        self.acc = CKAMatrixAccumulator(len(self.base_layers), len(self.new_layers), pairs,
                                        model_device(base, self.device))
        self.features = (LayerFeatures(base, self.base_layers, grid, max_features),
                         LayerFeatures(new, self.new_layers, grid, max_features))
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "CKAPass":
        try:
            for f in self.features:
                self._stack.enter_context(f)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> Tuple[Any, Any]:
        """Both forwards on the same batch ``x``; features added; (base output, new output)."""
        outs, feats = [], []
        for model, f in zip((self.base, self.new), self.features):
            for g in self.features:      # base and new may be one module: take each forward's own
                g.clear()
            outs.append(model(x.to(model_device(model, self.device), non_blocking=True)))
            feats.append(f.take())
        if self.acc.n == 0:
            self._check_budget([t.shape[1] for t in feats[0]], [t.shape[1] for t in feats[1]])
        self.acc.update(*feats)
        return outs[0], outs[1]

    def reductions(self) -> Tuple[Tuple[Reduction, ...], ...]:
        """(base, new) reductions per layer; empty before any image was seen."""
        return tuple(tuple(f.plans[n] for n in f.layers if n in f.plans) for f in self.features)

    def result(self, estimator: str = "debiased") -> CKAResult:
        return cka_result(self.acc, self.base_layers, self.new_layers, self.mode, *self.reductions(),
                          estimator=estimator)

    def _check_budget(self, px: Sequence[int], py: Sequence[int]) -> None:
        need = state_bytes(px, py, self.acc.pairs)
        if need > self.max_state_bytes:
            raise ValueError(
                f"the CKA sums for these layers need {need / 2**20:.0f} MiB (feature widths "
                f"{list(px)} vs {list(py)}, {len(self.acc.pairs)} pairs), more than the "
                f"{self.max_state_bytes / 2**20:.0f} MiB allowed; use a smaller grid or max_features, "
                "fewer layers, or compare layer pairs instead of a matrix")


def cka_result(acc: CKAMatrixAccumulator, base_layers: Sequence[str], new_layers: Sequence[str],
               mode: str, base_reduction: Sequence[Reduction], new_reduction: Sequence[Reduction],
               estimator: str = "debiased") -> CKAResult:
    """Freeze an accumulator's estimates into a result (after any shard merge)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown CKA estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    biased, debiased = acc.matrices()
    used, note = estimator, None
    if estimator == "debiased" and acc.n < MIN_IMAGES["debiased"]:
        used = "biased"
        note = (f"{acc.n} images: the debiased estimator needs at least {MIN_IMAGES['debiased']}, "
                "so the biased one is shown")
    return CKAResult(base_layers=tuple(base_layers), new_layers=tuple(new_layers), mode=mode, n=acc.n,
                     biased=biased, debiased=debiased, estimator=used, estimator_note=note,
                     base_reduction=tuple(base_reduction), new_reduction=tuple(new_reduction))


def stream_cka(base: nn.Module, new: nn.Module, dataset: torch.utils.data.Dataset,
               base_layers: Sequence[str], new_layers: Optional[Sequence[str]] = None,
               mode: str = "pairs", grid: Grid = DEFAULT_GRID,
               max_features: int = DEFAULT_MAX_FEATURES, batch_size: int = 64, workers: int = 0,
               device: Union[str, torch.device] = "cpu",
               max_state_bytes: int = DEFAULT_MAX_STATE_BYTES, progress: Optional[Progress] = None,
               on_batch: Optional[Callable[[Any, Any, torch.Tensor], None]] = None) -> CKAPass:
    """One pass of both models over ``dataset`` ((tensor, global index) items, e.g.
    ``topk.ImageDataset`` or a shard ``Subset``); returns the finished ``CKAPass``.

    ``on_batch(base_output, new_output, index)`` sees every batch's raw model
    outputs (prediction comparison rides on the same forwards). Call
    ``.result()`` on the return value, after merging shards if any.
    """
    device = torch.device(device)
    loader = make_loader(dataset, batch_size, workers, device)
    if progress is not None:
        loader = progress(loader, desc="compare pass", total=len(loader))
    run = CKAPass(base, new, base_layers, base_layers if new_layers is None else new_layers, mode,
                  grid, max_features, device, max_state_bytes)
    with run:
        for x, index in loader:
            b, n = run.step(x)
            if on_batch is not None:
                on_batch(b, n, index)
    return run


def layer_pairs_cka(base: nn.Module, new: nn.Module, dataset: torch.utils.data.Dataset,
                    layers: Sequence[str], new_layers: Optional[Sequence[str]] = None,
                    estimator: str = "debiased", **options) -> CKAResult:
    """CKA of layer i of ``base`` with layer i of ``new`` (``new_layers`` defaults to the same
    names: a same-architecture comparison). ``options`` as ``stream_cka``."""
    return stream_cka(base, new, dataset, layers, new_layers, "pairs", **options).result(estimator)


def cross_cka_matrix(base: nn.Module, new: nn.Module, dataset: torch.utils.data.Dataset,
                     base_layers: Sequence[str], new_layers: Sequence[str],
                     estimator: str = "debiased", **options) -> CKAResult:
    """CKA of every ``base_layers`` entry with every ``new_layers`` entry (any two architectures)."""
    return stream_cka(base, new, dataset, base_layers, new_layers, "matrix", **options).result(estimator)
