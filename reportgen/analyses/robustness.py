"""Does the model survive the images it will meet? Accuracy under corruptions (ImageNet-C).

One streamed pass: each batch is decoded and cropped once (the uint8 crop the
model sees before normalization), run clean, then under every corruption and
severity (``corruptions``), each corrupted copy normalized like the clean one
and run. State is integer counts per (corruption, severity): images whose
top-1 class is right (labelled images only) and images whose top-1 class
differs from the clean one (``flip``: needs no labels), plus one example per
corruption for the page. Counts add across shards.

Read from them: clean accuracy, accuracy and flip rate per cell, the mean
accuracy drop (clean minus the mean over every cell) and the worst cell
(largest accuracy drop; without labels, largest flip rate; ties: the earlier
corruption, then the lower severity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from reportgen.analyses import corruptions as cr
from reportgen.analyses.agreement import top1
from reportgen.analyses.topk import ImageDataset, make_loader
from reportgen.model.hooks import eval_mode
from reportgen.model.images import shrink_to
from reportgen.model.loading import model_device
from reportgen.model.outputs import OutputKey, select_output

THUMB = 96            # side of an example's stored picture


class CropDataset(torch.utils.data.Dataset):
    """An ImageDataset's crops before normalization: ((3, H, W) uint8, global index)."""

    def __init__(self, images: ImageDataset, indices: Sequence[int]):
        self.images, self.indices = images, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        index = self.indices[i]
        display = self.images.load(index)[1]
        return torch.from_numpy(np.ascontiguousarray(display)).permute(2, 0, 1), index


def normalize(rgb: torch.Tensor, channels: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the model's input, as ``images.preprocess`` makes it (greyscale: PIL's L)."""
    if channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        rgb = (rgb * w).sum(dim=1, keepdim=True)
    m = torch.tensor(mean, dtype=rgb.dtype, device=rgb.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=rgb.dtype, device=rgb.device).view(1, -1, 1, 1)
    return (rgb - m) / s


def spread(n_total: int, n: int) -> List[int]:
    """``n`` of ``n_total`` indices evenly spread over the listing (all when n >= n_total)."""
    if n >= n_total:
        return list(range(n_total))
    return sorted({int(round(v)) for v in np.linspace(0, n_total - 1, n)})


@dataclass(frozen=True)
class RobustnessResult:
    corruptions: Tuple[str, ...]
    severities: Tuple[int, ...]
    images: int
    labelled: int
    clean_correct: int
    correct: np.ndarray               # (C, S) right under the corruption (labelled images)
    flips: np.ndarray                 # (C, S) top-1 differs from the clean one (all images)
    examples: List[Dict[str, Any]] = field(default_factory=list)   # one flip per corruption, for the page

    @property
    def clean_accuracy(self) -> Optional[float]:
        return self.clean_correct / self.labelled if self.labelled else None

    @property
    def accuracy(self) -> Optional[np.ndarray]:
        return self.correct / self.labelled if self.labelled else None

    @property
    def flip_rate(self) -> np.ndarray:
        return self.flips / max(self.images, 1)

    @property
    def mean_accuracy_drop(self) -> Optional[float]:
        acc = self.accuracy
        return None if acc is None or not acc.size else float(self.clean_accuracy - acc.mean())

    def drop(self) -> Optional[np.ndarray]:
        acc = self.accuracy
        return None if acc is None else self.clean_accuracy - acc

    def worst(self) -> Optional[Dict[str, Any]]:
        if not self.flips.size:
            return None
        drop = self.drop()
        score = drop if drop is not None else self.flip_rate
        c, s = divmod(int(np.argmax(score)), score.shape[1])     # first maximum: earlier corruption, severity
        return {"corruption": self.corruptions[c], "severity": int(self.severities[s]),
                "accuracy_drop": None if drop is None else float(drop[c, s]),
                "flip_rate": float(self.flip_rate[c, s])}


def robustness_pass(model: nn.Module, images: ImageDataset, labels: Sequence[int],
                    corruptions: Sequence[str], severities: Sequence[int], n_images: Optional[int] = None,
                    batch_size: int = 32, workers: int = 0, device: Any = "cpu", output_key: OutputKey = None,
                    seed: int = 0, example_severity: Optional[int] = None,
                    progress: Optional[Callable[..., Any]] = None,
                    indices: Optional[Sequence[int]] = None) -> RobustnessResult:
    """Run ``images`` (``n_images`` of them, spread over the listing) clean and corrupted; see the module doc.

    ``indices``: run exactly these images instead (a shard of the spread, ``analyses.audit_pass``)."""
    unknown = [c for c in corruptions if c not in cr.FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown corruption {unknown[0]!r}; valid: {', '.join(cr.CORRUPTIONS)}")
    dev = model_device(model, torch.device(device))
    known = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    chosen = (spread(len(images), len(images) if n_images is None else int(n_images)) if indices is None
              else [int(i) for i in indices])
    data = CropDataset(images, chosen)
    channels = int(images.input_size[0])
    from reportgen.model.images import _normalization

    mean, std = _normalization(channels, images.mean, images.std)
    n_c, n_s = len(corruptions), len(severities)
    correct = torch.zeros((n_c, n_s), dtype=torch.int64)
    flips = torch.zeros((n_c, n_s), dtype=torch.int64)
    clean_correct, labelled, seen = 0, 0, 0
    shown = example_severity if example_severity in severities else severities[len(severities) // 2]
    examples: Dict[str, Dict[str, Any]] = {}
    loader = make_loader(data, batch_size, workers, dev)
    steps = progress(loader, desc="robustness", total=len(loader)) if progress else loader

    def run(rgb: torch.Tensor) -> torch.Tensor:
        return top1(select_output(model(normalize(rgb, channels, mean, std).to(dev)), output_key)).cpu()

    with eval_mode(model), torch.no_grad():
        for raw, index in steps:
            rgb = raw.float() / 255.0                   # decoded once, reused for every corruption
            lab = known[index.long()]
            has = lab >= 0
            clean = run(rgb)
            seen += int(rgb.shape[0])
            labelled += int(has.sum())
            clean_correct += int((has & (clean == lab)).sum())
            seeds = [int(seed) * 1_000_003 + int(i) for i in index]
            for ci, name in enumerate(corruptions):
                for si, sev in enumerate(severities):
                    bad = cr.corrupt(rgb, name, int(sev), seeds)
                    pred = run(bad)
                    flipped = pred != clean
                    correct[ci, si] += int((has & (pred == lab)).sum())
                    flips[ci, si] += int(flipped.sum())
                    if sev == shown and name not in examples and bool(flipped.any()):
                        j = int(np.nonzero(flipped.numpy())[0][0])
                        pic = (bad[j].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
                        examples[name] = {"index": int(index[j]), "corruption": name, "severity": int(sev),
                                          "clean": int(clean[j]), "corrupted": int(pred[j]),
                                          "label": int(lab[j]), "picture": shrink_to(pic, THUMB)}
    return RobustnessResult(tuple(corruptions), tuple(int(s) for s in severities), seen, labelled, clean_correct,
                            correct.numpy(), flips.numpy(), [examples[c] for c in corruptions if c in examples])
