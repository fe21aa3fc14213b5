"""Do two models predict the same thing on the same images? Streamed, mergeable counts.

Per batch, each model's top-1 class (ties: the lowest class index, on any
device) is compared image by image:

* **agreement**: the share of images where both top-1 classes are equal;
* with a true label (from the dataset's class folders): a **negative flip**
  is right in BASE and wrong in NEW, a **positive flip** wrong in BASE and
  right in NEW (Yan et al. 2021, "Positive-congruent training"); per-class
  accuracy before and after. Images without a label (probes, a folder that
  names no class) count for agreement only; with no labelled image at all,
  flips are None ("no labels"), never 0.

State is a few integer counts per class plus the flipped images' indices (for
thumbnails), so memory grows with the number of flips, not the dataset.
``merge`` adds another shard's state exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from reportgen.model.classes import default_classes

UNKNOWN = -1   # label of an image whose class is not known


# --------------------------------------------------------------------------- labels

@dataclass(frozen=True)
class FolderLabels:
    """True class indices of dataset images, and where they came from."""

    labels: np.ndarray            # (N,) int64, UNKNOWN where not known
    names: Tuple[str, ...]        # names[i]: the class of label i (the model's output i)
    rule: Optional[str]           # "name" | "imagefolder" | None (no labels)
    note: str                     # how the labels were read, for the report


def folder_labels(folders: Sequence[Optional[str]], classes: Sequence[str]) -> FolderLabels:
    """Labels from ImageFolder class folders (``None``: an image outside any class folder).

    * "name": a folder named like one of the model's ``classes`` is that class
      (folders naming no class are unlabelled), as the embeddings section does;
    * "imagefolder": when no folder names a class but there are exactly as many
      folders as classes, torchvision's ``ImageFolder`` rule: the sorted folder
      names are classes 0..K-1 (and name them);
    * otherwise no image is labelled, and ``note`` says why.
    """
    classes = [str(c) for c in classes]
    present = sorted({f for f in folders if f is not None})
    none = np.full(len(folders), UNKNOWN, dtype=np.int64)
    if not present:
        return FolderLabels(none, tuple(classes), None, "the dataset has no class folders")
    index = {name: i for i, name in enumerate(classes)}
    if any(f in index for f in present):
        labels = np.array([index.get(f, UNKNOWN) if f is not None else UNKNOWN for f in folders],
                          dtype=np.int64)
        unmatched = [f for f in present if f not in index]
        note = "class folders matched to the model's class names by name"
        if unmatched:
            note += (f"; {len(unmatched)} folder(s) name no class and are unlabelled: "
                     f"{', '.join(unmatched[:5])}")
        return FolderLabels(labels, tuple(classes), "name", note)
    if len(present) == len(classes):
        index = {name: i for i, name in enumerate(present)}
        labels = np.array([index[f] if f is not None else UNKNOWN for f in folders], dtype=np.int64)
        return FolderLabels(labels, tuple(present), "imagefolder",
                            "no folder is named like a class: sorted folder names are classes "
                            "0..K-1 (torchvision ImageFolder)")
    return FolderLabels(none, tuple(classes), None,
                        f"{len(present)} class folders name none of the model's {len(classes)} "
                        "classes, so no image is labelled")


def top1(logits: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's maximum; the lowest index among ties, on every device.

    NaN scores never win (a row of NaNs gives class 0).
    """
    scores = torch.nan_to_num(logits.detach().float(), nan=-float("inf"))
    best = scores.max(dim=1, keepdim=True).values
    k = scores.shape[1]
    ids = torch.arange(k, device=scores.device).expand_as(scores)
    return torch.where(scores == best, ids, torch.full_like(ids, k)).min(dim=1).values.clamp(max=k - 1)


# --------------------------------------------------------------------------- result

@dataclass(frozen=True)
class Flips:
    """Images whose prediction changed in one way, in dataset-index order."""

    indices: np.ndarray           # (M,) int64 global image indices
    labels: np.ndarray            # (M,) int64 true class, UNKNOWN where not known
    base: np.ndarray              # (M,) int64 BASE's top-1
    new: np.ndarray               # (M,) int64 NEW's top-1

    @classmethod
    def empty(cls) -> "Flips":
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z)

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class AgreementResult:
    """Prediction comparison of BASE and NEW over ``n`` images."""

    n: int                        # images compared
    agree: int                    # same top-1 class
    n_labelled: int               # images with a known true class
    class_names: Tuple[str, ...]  # (K,) names of the class indices
    class_count: np.ndarray       # (K,) labelled images per true class
    base_correct: np.ndarray      # (K,) of those, right in BASE
    new_correct: np.ndarray       # (K,) of those, right in NEW
    negative: Flips               # right in BASE, wrong in NEW
    positive: Flips               # wrong in BASE, right in NEW
    changed: Flips                # every image whose top-1 changed (labelled or not)

    @property
    def agreement(self) -> Optional[float]:
        return self.agree / self.n if self.n else None

    @property
    def negative_flips(self) -> Optional[int]:
        return len(self.negative) if self.n_labelled else None

    @property
    def positive_flips(self) -> Optional[int]:
        return len(self.positive) if self.n_labelled else None

    @property
    def base_accuracy(self) -> Optional[float]:
        return int(self.base_correct.sum()) / self.n_labelled if self.n_labelled else None

    @property
    def new_accuracy(self) -> Optional[float]:
        return int(self.new_correct.sum()) / self.n_labelled if self.n_labelled else None

    def per_class(self) -> Dict[str, Dict[str, float]]:
        """Classes with at least one labelled image, in class order: accuracy before/after."""
        return {self.class_names[k]: {"base_accuracy": int(self.base_correct[k]) / int(c),
                                      "new_accuracy": int(self.new_correct[k]) / int(c)}
                for k, c in enumerate(self.class_count) if c}

    def predictions_json(self) -> Dict[str, Any]:
        """report.json's ``comparison.predictions`` (SPEC.md, "Comparison"), exactly its keys."""
        return {"n": int(self.n), "agreement": self.agreement,
                "negative_flips": self.negative_flips, "positive_flips": self.positive_flips,
                "per_class": self.per_class()}


# --------------------------------------------------------------------------- accumulator

class AgreementCounter:
    """Streaming prediction comparison; ``update`` per batch, ``merge`` per shard.

    Counts live as one int64 tensor (``counts``: n, agree, n_labelled, then
    per class: images, BASE right, NEW right) so shards can be all-reduced;
    the flipped images are small lists, gathered.
    """

    HEAD = 3   # n, agree, n_labelled

    def __init__(self, class_names: Sequence[str], device: Any = "cpu"):
        self.class_names = tuple(str(c) for c in class_names)
        k = len(self.class_names)
        if k < 1:
            raise ValueError("prediction comparison needs at least one class")
        self.counts = torch.zeros(self.HEAD + 3 * k, dtype=torch.int64, device=torch.device(device))
        self._flips: Dict[str, List[np.ndarray]] = {"negative": [], "positive": [], "changed": []}

    @property
    def k(self) -> int:
        return len(self.class_names)

    def update(self, base_logits: torch.Tensor, new_logits: torch.Tensor, index: Any,
               labels: Optional[Any] = None) -> None:
        """Add a batch: (B, K) scores of each model, (B,) global image indices and true
        classes (UNKNOWN for unlabelled images; None: none labelled)."""
        if base_logits.ndim != 2 or base_logits.shape != new_logits.shape:
            raise ValueError(f"both models need (B, K) class scores of one shape; got "
                             f"{tuple(base_logits.shape)} and {tuple(new_logits.shape)}")
        if base_logits.shape[1] != self.k:
            raise ValueError(f"the models give {base_logits.shape[1]} class scores but "
                             f"{self.k} class names were given")
        dev = self.counts.device
        b, n = top1(base_logits).to(dev), top1(new_logits).to(dev)
        idx = torch.as_tensor(index).to(device=dev, dtype=torch.int64).reshape(-1)
        lab = (torch.full_like(b, UNKNOWN) if labels is None
               else torch.as_tensor(labels).to(device=dev, dtype=torch.int64).reshape(-1))
        if not (idx.shape == lab.shape == b.shape):
            raise ValueError(f"{b.shape[0]} images but {idx.shape[0]} indices and {lab.shape[0]} labels")
        if bool(((lab < UNKNOWN) | (lab >= self.k)).any()):
            raise ValueError(f"a label is outside 0..{self.k - 1} (or {UNKNOWN} for unknown)")
        known = lab != UNKNOWN
        safe = lab.clamp(min=0)
        b_ok, n_ok = known & (b == lab), known & (n == lab)
        k = self.k
        self.counts[0] += b.shape[0]
        self.counts[1] += (b == n).sum()
        self.counts[2] += known.sum()
        self.counts[self.HEAD:] += torch.cat([torch.bincount(safe[m], minlength=k)
                                              for m in (known, b_ok, n_ok)])
        for kind, mask in (("negative", b_ok & ~n_ok & known), ("positive", ~b_ok & n_ok & known),
                           ("changed", b != n)):
            if bool(mask.any()):
                rows = torch.stack([idx[mask], lab[mask], b[mask], n[mask]])
                self._flips[kind].append(rows.cpu().numpy())

    def flips(self) -> Dict[str, np.ndarray]:
        """Per kind, a (4, M) int64 array of (index, label, base, new), sorted by index."""
        out = {}
        for kind, parts in self._flips.items():
            rows = np.concatenate(parts, axis=1) if parts else np.zeros((4, 0), dtype=np.int64)
            out[kind] = rows[:, np.argsort(rows[0], kind="stable")]
        return out

    def replace_flips(self, parts: Sequence[Dict[str, np.ndarray]]) -> None:
        """Drop the flips seen so far and keep those of ``parts`` (every shard's ``flips()``)."""
        self._flips = {kind: [] for kind in self._flips}
        for flips in parts:
            self.add_flips(flips)

    def add_flips(self, flips: Dict[str, np.ndarray]) -> None:
        """Add (4, M) flip rows per kind, as ``flips()`` gives them."""
        for kind, rows in flips.items():
            if rows.shape[1]:
                self._flips[kind].append(np.asarray(rows, dtype=np.int64))

    def merge(self, other: "AgreementCounter") -> None:
        """Add another shard's counts and flips (images disjoint from this one's)."""
        if other.class_names != self.class_names:
            raise ValueError("cannot merge prediction comparisons over different classes")
        self.counts += other.counts.to(self.counts.device)
        self.add_flips(other.flips())

    def result(self) -> AgreementResult:
        c = self.counts.cpu().numpy().astype(np.int64)
        k, h = self.k, self.HEAD
        flips = {kind: Flips(*(np.ascontiguousarray(r) for r in rows)) for kind, rows in self.flips().items()}
        return AgreementResult(n=int(c[0]), agree=int(c[1]), n_labelled=int(c[2]),
                               class_names=self.class_names,
                               class_count=c[h:h + k], base_correct=c[h + k:h + 2 * k],
                               new_correct=c[h + 2 * k:h + 3 * k], **flips)


def compare_predictions(base_logits: Any, new_logits: Any, labels: Optional[Any] = None,
                        class_names: Optional[Sequence[str]] = None) -> AgreementResult:
    """One-shot comparison of (N, K) scores (tensors or arrays); indices are 0..N-1."""
    b, n = torch.as_tensor(np.asarray(base_logits)), torch.as_tensor(np.asarray(new_logits))
    names = class_names if class_names is not None else default_classes(b.shape[1])
    counter = AgreementCounter(names)
    counter.update(b, n, torch.arange(b.shape[0]), labels)
    return counter.result()
