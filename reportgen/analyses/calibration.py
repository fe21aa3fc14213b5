"""Does the model's confidence mean anything? Top-1 calibration, streamed (Guo et al. 2017).

Conventions (those of Guo et al. and of torchmetrics'
``MulticlassCalibrationError(norm="l1")``):

* confidence is the top-1 softmax probability, "correct" whether the top-1
  class is the true one;
* **ECE**: 15 equal-width bins over [0, 1] (bin b holds confidences in
  [b/15, (b+1)/15), a confidence of exactly 1 the last bin);
  ECE = sum over bins of |accuracy - mean confidence| x bin share;
* **adaptive ECE**: the same with 15 equal-mass bins (confidences sorted, split
  into 15 runs of nearly equal size; Nixon et al. 2019);
* **NLL**: mean -log p(true class); **Brier**: mean sum over classes of
  (p_k - [k = true])^2 (0 = perfect, 2 = worst);
* **temperature** (Guo et al.): the T > 0 minimizing the NLL of softmax(z / T).

Streaming state (``CalibrationCounter``), all sums, merged by adding:

* per-bin (count, confidence sum, correct sum) at T = 1, plus NLL and Brier sums;
* for a fixed grid of temperatures (``TEMPERATURES``, log-spaced 0.05..20, 5 %
  apart): the NLL sum, its derivative in beta = 1/T, and the same per-bin sums.
  The NLL is convex in beta (its second derivative is the variance of z under
  softmax(beta z)), so the fitted temperature is where the derivative changes
  sign: the secant between the two grid points that bracket it (exact for a
  quadratic, error well under 0.1 % at this spacing). ECE after temperature is
  the bin-sum ECE interpolated linearly in log T between those two grid points.
  No logits are kept: memory does not grow with the dataset.

What is kept per image: its confidence and whether it was right (two arrays of
n), for the bootstrap interval of ECE and for the adaptive bins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np
import torch

BINS = 15
BOOTSTRAP = 200
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 124))   # ratio 1.05 between neighbours


# --------------------------------------------------------------------------- from arrays

def bin_index(confidence: Any, bins: int = BINS) -> Any:
    """Equal-width bin of each confidence, 0..bins-1 (numpy or torch, same rule)."""
    if torch.is_tensor(confidence):
        return (confidence * bins).floor().long().clamp(0, bins - 1)
    return np.clip(np.floor(np.asarray(confidence, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


def bin_sums(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> np.ndarray:
    """(3, bins) float64: count, confidence sum, correct sum per equal-width bin."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    idx = bin_index(conf, bins)
    return np.stack([np.bincount(idx, minlength=bins).astype(np.float64),
                     np.bincount(idx, conf, minlength=bins), np.bincount(idx, ok, minlength=bins)])


def ece_from_sums(sums: np.ndarray) -> float:
    """ECE of (3, bins) sums (count, confidence sum, correct sum)."""
    n = float(sums[0].sum())
    return float(np.abs(sums[2] - sums[1]).sum() / n) if n else float("nan")


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Top-1 expected calibration error with ``bins`` equal-width bins."""
    return ece_from_sums(bin_sums(confidence, correct, bins))


def adaptive_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """ECE over ``bins`` equal-mass bins (sorted confidences in runs of nearly equal size)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    n = conf.size
    if not n:
        return float("nan")
    order = np.argsort(conf, kind="stable")
    gap = ok[order] - conf[order]
    return float(sum(abs(part.sum()) for part in np.array_split(gap, min(bins, n))) / n)


def bootstrap_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS,
                  resamples: int = BOOTSTRAP, seed: int = 0) -> Tuple[float, float]:
    """95 % bootstrap interval of ECE (images resampled with replacement, seeded; bias-corrected)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    n = conf.size
    if not n:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx_bin = bin_index(conf, bins)
    gap = ok - conf
    values = np.empty(resamples)
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(r, n))
        flat = (np.arange(r)[:, None] * bins + idx_bin[draws]).ravel()
        sums = np.bincount(flat, gap[draws].ravel(), minlength=r * bins).reshape(r, bins)
        values[start:start + r] = np.abs(sums).sum(axis=1) / n
    # ECE is biased upward (|sum| of noise), the more so the fewer images per bin: the
    # resampled values are shifted by their mean's excess over the estimate (bias-corrected
    # percentile interval), so the interval brackets the estimate rather than the biased mean.
    point = float(np.abs(np.bincount(idx_bin, gap, minlength=bins)).sum() / n)
    shift = float(values.mean()) - point
    lo, hi = np.percentile(values, [2.5, 97.5]) - shift
    return float(max(0.0, lo)), float(min(1.0, max(0.0, hi)))


# --------------------------------------------------------------------------- streaming

class CalibrationCounter:
    """Per-bin and per-temperature sums over batches of (B, K) logits and (B,) labels."""

    def __init__(self, bins: int = BINS, temperatures: np.ndarray = TEMPERATURES, device: Any = "cpu"):
        self.bins = int(bins)
        dev = torch.device(device)
        self.beta = torch.as_tensor(1.0 / np.asarray(temperatures, dtype=np.float64), device=dev)
        g = self.beta.numel()
        self.sums = torch.zeros((3, self.bins), dtype=torch.float64, device=dev)       # at T = 1
        self.scalars = torch.zeros(3, dtype=torch.float64, device=dev)                   # n, NLL sum, Brier sum
        self.grid_nll = torch.zeros((2, g), dtype=torch.float64, device=dev)             # NLL sum, d/dbeta
        self.grid_sums = torch.zeros((g, 3, self.bins), dtype=torch.float64, device=dev)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, chunk: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add a batch (labels < 0 skipped); returns the labelled rows' (confidence, correct)."""
        dev = self.sums.device
        z = torch.nan_to_num(logits.detach().to(dev, torch.float64), nan=-1e30)
        lab = labels.to(dev, torch.int64).reshape(-1)
        keep = lab >= 0
        z, lab = z[keep], lab[keep]
        if not z.shape[0]:
            empty = torch.zeros(0, dtype=torch.float64)
            return empty, empty
        logp = torch.log_softmax(z, dim=1)
        p = logp.exp()
        conf, pred = p.max(dim=1)
        correct = (pred == lab).double()
        self._add_bins(self.sums, conf, correct)
        onehot = torch.nn.functional.one_hot(lab, z.shape[1]).double()
        self.scalars += torch.stack([torch.tensor(float(z.shape[0]), dtype=torch.float64, device=dev),
                                     -logp.gather(1, lab[:, None]).sum(), ((p - onehot) ** 2).sum()])
        # the grid in float32 (sums stay float64): a (B, g, K) block per ``chunk`` temperatures
        z32 = z.float()
        zy = z32.gather(1, lab[:, None])[:, 0]
        for s in range(0, self.beta.numel(), chunk):
            beta = self.beta[s:s + chunk].float()
            scaled = z32[:, None, :] * beta[None, :, None]
            lp = torch.log_softmax(scaled, dim=2)
            pg = lp.exp()
            nll = -lp.gather(2, lab[:, None, None].expand(-1, beta.numel(), 1))[..., 0]
            expected = (pg * z32[:, None, :]).sum(dim=2)                 # E_p[z]: d/dbeta of logsumexp
            self.grid_nll[0, s:s + chunk] += nll.sum(dim=0).double()
            self.grid_nll[1, s:s + chunk] += (expected - zy[:, None]).double().sum(dim=0)
            gconf = pg.max(dim=2).values                               # (B, g): argmax does not move with T
            g = beta.numel()
            flat = (torch.arange(g, device=dev)[None, :] * self.bins + bin_index(gconf, self.bins)).reshape(-1)
            size = g * self.bins
            self.grid_sums[s:s + g] += torch.stack([
                torch.bincount(flat, minlength=size).double(),
                torch.bincount(flat, gconf.reshape(-1).double(), minlength=size),
                torch.bincount(flat, correct[:, None].expand(-1, g).reshape(-1), minlength=size),
            ]).reshape(3, g, self.bins).transpose(0, 1)
        return conf.cpu(), correct.cpu()

    def _add_bins(self, target: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor) -> None:
        idx = bin_index(conf, self.bins)
        target[0] += torch.bincount(idx, minlength=self.bins).double()
        target[1] += torch.bincount(idx, conf, minlength=self.bins)
        target[2] += torch.bincount(idx, correct, minlength=self.bins)

    def merge(self, other: "CalibrationCounter") -> None:
        for name in ("sums", "scalars", "grid_nll", "grid_sums"):
            getattr(self, name).add_(getattr(other, name).to(self.sums.device))

    def state(self) -> Tuple[torch.Tensor, ...]:
        """The additive tensors, for an all-reduce."""
        return self.sums, self.scalars, self.grid_nll, self.grid_sums


def fit_temperature(beta: np.ndarray, derivative: np.ndarray) -> Tuple[float, int, bool]:
    """T = 1/beta* where the (increasing) NLL derivative crosses 0; (T, left grid index, clamped).

    ``beta`` descending (temperatures ascending) is accepted: the grid is sorted by beta here.
    """
    order = np.argsort(beta)
    b, g = np.asarray(beta, dtype=np.float64)[order], np.asarray(derivative, dtype=np.float64)[order]
    if g[0] >= 0:
        return float(1 / b[0]), int(order[0]), True
    if g[-1] <= 0:
        return float(1 / b[-1]), int(order[-1]), True
    j = int(np.nonzero(g >= 0)[0][0]) - 1                     # g[j] < 0 <= g[j + 1]
    star = b[j] - g[j] * (b[j + 1] - b[j]) / (g[j + 1] - g[j])
    return float(1 / star), j, False


@dataclass(frozen=True)
class CalibrationResult:
    n: int
    bins: int
    ece: float
    ece_ci: Tuple[float, float]
    adaptive_ece: float
    nll: float
    brier: float
    temperature: float
    temperature_clamped: bool          # the optimum lies at the end of the grid
    ece_after_temperature: float
    sums: np.ndarray                   # (3, bins) count, confidence sum, correct sum
    sums_after: np.ndarray             # (3, bins) the same after temperature (interpolated)
    accuracy: float
    confidence: float                  # mean top-1 confidence
    resamples: int

    def reliability(self, sums: Optional[np.ndarray] = None) -> dict:
        """Per bin: mean confidence, accuracy (None for an empty bin) and count (SPEC's keys)."""
        s = self.sums if sums is None else sums
        count = s[0]
        safe = np.where(count > 0, count, 1)
        return {"confidence": [float(v) if c else None for v, c in zip(s[1] / safe, count)],
                "accuracy": [float(v) if c else None for v, c in zip(s[2] / safe, count)],
                "count": [int(round(c)) for c in count]}


def calibration_result(counter: CalibrationCounter, confidence: np.ndarray, correct: np.ndarray,
                       resamples: int = BOOTSTRAP, seed: int = 0) -> CalibrationResult:
    """Everything the section reports, from the merged counter and the per-image arrays."""
    sums = counter.sums.cpu().numpy()
    n, nll, brier = counter.scalars.cpu().numpy()
    beta = counter.beta.cpu().numpy()
    grid = counter.grid_nll.cpu().numpy()
    grid_sums = counter.grid_sums.cpu().numpy()
    t, j, clamped = fit_temperature(beta, grid[1])
    order = np.argsort(beta)
    if clamped:
        after = grid_sums[j]
    else:   # linear in log T between the bracketing grid points
        lo, hi = order[j], order[j + 1]
        w = (np.log(t) - np.log(1 / beta[lo])) / (np.log(1 / beta[hi]) - np.log(1 / beta[lo]))
        after = (1 - w) * grid_sums[lo] + w * grid_sums[hi]
    n = int(round(n))
    return CalibrationResult(
        n=n, bins=counter.bins, ece=ece_from_sums(sums), ece_ci=bootstrap_ece(confidence, correct, counter.bins,
                                                                             resamples, seed),
        adaptive_ece=adaptive_ece(confidence, correct, counter.bins), nll=float(nll / n) if n else float("nan"),
        brier=float(brier / n) if n else float("nan"), temperature=t, temperature_clamped=clamped,
        ece_after_temperature=ece_from_sums(after), sums=sums, sums_after=after,
        accuracy=float(sums[2].sum() / n) if n else float("nan"),
        confidence=float(sums[1].sum() / n) if n else float("nan"), resamples=int(resamples))


def calibrate(logits: Any, labels: Any, bins: int = BINS, resamples: int = BOOTSTRAP, seed: int = 0,
              batch_size: int = 4096) -> CalibrationResult:
    """One-shot calibration of (N, K) logits (tensor or array) against (N,) labels."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    counter = CalibrationCounter(bins)
    conf, ok = [], []
    for s in range(0, z.shape[0], batch_size):
        c, k = counter.update(z[s:s + batch_size], y[s:s + batch_size])
        conf.append(c.numpy())
        ok.append(k.numpy())
    return calibration_result(counter, np.concatenate(conf), np.concatenate(ok), resamples, seed)
