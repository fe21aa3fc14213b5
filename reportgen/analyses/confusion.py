"""Where a classifier fails: a streamed confusion matrix, per-class rates and Wilson intervals.

State is one (K, K) int64 count matrix (rows: true class, columns: predicted),
updated per batch and merged per shard by adding (``ConfusionCounter``), as
torchmetrics keeps its ``confmat`` state. Everything else is read from it:

* accuracy with the Wilson score interval (Wilson 1927), which keeps its
  coverage near 0 and 1 and for small n where the normal approximation fails;
* per class: precision (None when the class is never predicted), recall (None
  without images of that class) and the recall's Wilson interval;
* the largest off-diagonal cells (top confusions; ties: lower true, then lower
  predicted class index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

Z95 = 1.959963984540054   # two-sided 95 % normal quantile


def wilson(k: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """Wilson score interval of k successes in n trials; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


class ConfusionCounter:
    """Streaming (K, K) confusion counts; ``update`` per batch, ``merge`` per shard."""

    def __init__(self, k: int, device: Any = "cpu"):
        if k < 1:
            raise ValueError("a confusion matrix needs at least one class")
        self.k = int(k)
        self.counts = torch.zeros((self.k, self.k), dtype=torch.int64, device=torch.device(device))

    def update(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        """Add (B,) predicted and true class indices (labels < 0 are skipped: unknown)."""
        pred = predicted.to(self.counts.device, torch.int64).reshape(-1)
        lab = labels.to(self.counts.device, torch.int64).reshape(-1)
        keep = lab >= 0
        flat = lab[keep] * self.k + pred[keep]
        self.counts += torch.bincount(flat, minlength=self.k * self.k).reshape(self.k, self.k)

    def merge(self, other: "ConfusionCounter") -> None:
        self.counts += other.counts.to(self.counts.device)

    def result(self, classes: Sequence[str]) -> "ConfusionResult":
        return ConfusionResult(tuple(str(c) for c in classes), self.counts.cpu().numpy().astype(np.int64))


@dataclass(frozen=True)
class ConfusionResult:
    classes: Tuple[str, ...]
    confusion: np.ndarray            # (K, K) int64, rows true, columns predicted

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def accuracy(self) -> Optional[float]:
        return self.correct / self.n if self.n else None

    @property
    def accuracy_ci(self) -> Tuple[float, float]:
        return wilson(self.correct, self.n)

    def per_class(self) -> Dict[str, Dict[str, Any]]:
        """Every class, in class order: n, precision, recall, recall_ci (SPEC's keys)."""
        c = self.confusion
        support, predicted, hits = c.sum(axis=1), c.sum(axis=0), np.diag(c)
        out: Dict[str, Dict[str, Any]] = {}
        for i, name in enumerate(self.classes):
            n, p, k = int(support[i]), int(predicted[i]), int(hits[i])
            out[name] = {"n": n, "precision": k / p if p else None, "recall": k / n if n else None,
                         "recall_ci": list(wilson(k, n))}
        return out

    def top_confusions(self, m: int) -> List[Dict[str, Any]]:
        """The ``m`` largest off-diagonal cells with a count (ties: lower true, then predicted index)."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        flat = off.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))   # count desc, then row-major index
        out = []
        for i in order[:m]:
            if flat[i] <= 0:
                break
            t, p = divmod(int(i), self.k)
            out.append({"true": self.classes[t], "predicted": self.classes[p], "count": int(flat[i])})
        return out

    @property
    def k(self) -> int:
        return len(self.classes)

    def worst_classes(self, m: int) -> List[str]:
        """Classes with images, lowest recall first (ties: more images, then class order)."""
        rows = [(hits / n, -n, i) for i, (hits, n) in
                enumerate(zip(np.diag(self.confusion), self.confusion.sum(axis=1))) if n]
        return [self.classes[i] for _, _, i in sorted(rows)[:m]]
